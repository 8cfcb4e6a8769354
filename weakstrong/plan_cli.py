"""``weakstrong plan``: per-GPU memory of SFT or WMSS for a model and hardware (the memory model of
:mod:`weakstrong.memory_model`, an estimate from formulas), and which micro-batch / ZeRO stage / checkpointing fits.

    weakstrong plan --model Qwen/Qwen3-8B-Base --mode wmss --gpus 8 --gpu-gib 80 --zero-stage 3 --seq-len 4096
    weakstrong plan --model path/to/config.json --mode lora --json
"""

from __future__ import annotations

import json
from dataclasses import replace


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True,
                        help="a config.json, a model folder, or a hub id (Qwen3-4B/8B(-Base), Qwen2.5-3B are built "
                             "in; other ids download their config.json, which needs the network)")
    parser.add_argument("--mode", default="wmss", choices=["sft", "wmss", "frozen-weak", "lora"],
                        help="sft: one model; wmss: strong + weak both trained (the paper); frozen-weak: weak frozen; "
                             "lora: one base, two adapters")
    parser.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (the paper: 4,096)")
    parser.add_argument("--supervised", type=int, default=None,
                        help="supervised tokens per sequence (default: all of --seq-len, an upper bound)")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per GPU per step")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory per GPU, GiB")
    parser.add_argument("--zero-stage", type=int, default=3, choices=[0, 1, 2, 3])
    parser.add_argument("--no-checkpointing", action="store_true", help="without gradient checkpointing")
    parser.add_argument("--loss-path", default="hidden", choices=["hidden", "logits"],
                        help="hidden: the chunked hidden-state kernels (weakstrong's default on GPU); logits: [N, V] "
                             "logits materialised")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--global-batch", type=int, default=512,
                        help="sequences per optimizer step (the paper: 512); gives the accumulation steps")
    parser.add_argument("--reserve-gib", type=float, default=3.0,
                        help="GiB per GPU kept for what the model does not count (CUDA context, NCCL, fragmentation)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")


def accumulation(global_batch: int, micro_batch: int, gpus: int) -> int | None:
    """Gradient accumulation steps giving ``global_batch`` exactly, or None when it does not divide."""
    per_step = micro_batch * gpus
    return global_batch // per_step if global_batch % per_step == 0 else None


def plan(args) -> dict:
    from .cli import UserError
    from .memory_model import GiB, MODE_NAMES, Settings, breakdown, fit_options, load_arch, param_count

    for flag, v in (("--seq-len", args.seq_len), ("--micro-batch", args.micro_batch), ("--gpus", args.gpus),
                    ("--global-batch", args.global_batch), ("--lora-rank", args.lora_rank)):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    if args.gpu_gib <= args.reserve_gib:
        raise UserError(f"--gpu-gib ({args.gpu_gib}) must exceed --reserve-gib ({args.reserve_gib})")
    if args.supervised is not None and not 1 <= args.supervised <= args.seq_len:
        raise UserError(f"--supervised must be between 1 and --seq-len ({args.seq_len}), got {args.supervised}")
    arch = load_arch(args.model)
    mode = MODE_NAMES[args.mode]
    st = replace(Settings(), seq_len=args.seq_len, supervised=args.supervised or args.seq_len,
                 micro_batch=args.micro_batch, gpus=args.gpus, gpu_gib=args.gpu_gib, lora_rank=args.lora_rank,
                 zero_stage=args.zero_stage, checkpointing=not args.no_checkpointing)
    b = breakdown(arch, mode, args.loss_path, st)
    budget = args.gpu_gib - args.reserve_gib
    gib = {k: b[k] / GiB for k in ("weights", "grads", "optimizer", "zero3_gathered", "activations", "loss",
                                   "step_transient", "peak")}
    options = fit_options(arch, mode, args.loss_path, st, reserve_gib=args.reserve_gib)
    fitting = [dict(o, accumulation=accumulation(args.global_batch, o["micro_batch"], args.gpus))
               for o in options if o["fits"]]
    best = next((o for o in fitting if o["accumulation"] is not None), None)
    return {
        "model": args.model, "arch": arch.name, "params": param_count(arch), "mode": mode, "loss_path": args.loss_path,
        "settings": {"seq_len": st.seq_len, "supervised": st.supervised, "micro_batch": st.micro_batch,
                     "gpus": st.gpus, "gpu_gib": st.gpu_gib, "zero_stage": st.zero_stage,
                     "checkpointing": st.checkpointing, "lora_rank": st.lora_rank, "reserve_gib": args.reserve_gib},
        "per_gpu_gib": gib, "peak_phase": b["peak_phase"], "fits": b["peak"] <= budget * GiB,
        "accumulation": accumulation(args.global_batch, st.micro_batch, st.gpus), "global_batch": args.global_batch,
        "recommended": best, "fitting": fitting,
    }


def text(p: dict) -> str:
    s, g = p["settings"], p["per_gpu_gib"]
    ckpt = "on" if s["checkpointing"] else "off"
    acc = p["accumulation"]
    lines = [f"{p['arch']} ({p['params'] / 1e9:.2f} B parameters), mode {p['mode']}, loss path {p['loss_path']}: "
             f"{s['gpus']} GPUs x {s['gpu_gib']:g} GiB, ZeRO-{s['zero_stage']}, checkpointing {ckpt}, micro-batch "
             f"{s['micro_batch']} x {s['seq_len']} tokens ({s['supervised']} supervised)",
             "",
             "per GPU, GiB (estimate from formulas: python benchmarks/methods/wmss_memory_model.py lists them)",
             f"  weights {g['weights']:.2f} | grads {g['grads']:.2f} | optimizer {g['optimizer']:.2f} | "
             f"ZeRO-3 gathered {g['zero3_gathered']:.2f} | activations {g['activations']:.2f} | "
             f"loss {g['loss']:.2f}",
             f"  peak {g['peak']:.2f} GiB ({p['peak_phase']}) -> "
             + ("fits" if p["fits"] else "does NOT fit")
             + f" in {s['gpu_gib'] - s['reserve_gib']:g} GiB ({s['gpu_gib']:g} less {s['reserve_gib']:g} reserved)",
             "  global batch " + (f"{p['global_batch']} = {s['micro_batch']} x {s['gpus']} GPUs x {acc} accumulation steps"
                                  if acc else f"{p['global_batch']} is not a multiple of micro-batch x GPUs "
                                              f"({s['micro_batch'] * s['gpus']})"), ""]
    r = p["recommended"]
    if r is None:
        lines.append("nothing fits: fewer tokens per sequence, more GPUs, LoRA mode or a frozen weak model")
    else:
        lines.append(f"recommended (the largest micro-batch, then no checkpointing, then the lowest stage): "
                     f"ZeRO-{r['zero_stage']}, checkpointing {'on' if r['checkpointing'] else 'off'}, micro-batch "
                     f"{r['micro_batch']} x {r['accumulation']} accumulation steps: peak {r['peak_gib']:.1f} GiB")
        lines += ["", "what fits (stage, checkpointing, micro-batch: peak GiB):"]
        for o in p["fitting"][:12]:
            lines.append(f"  ZeRO-{o['zero_stage']}  checkpointing {'on ' if o['checkpointing'] else 'off'}  "
                         f"micro-batch {o['micro_batch']:>2}: {o['peak_gib']:6.1f}"
                         + ("" if o["accumulation"] else f"  (global batch {p['global_batch']} not divisible)"))
        if len(p["fitting"]) > 12:
            lines.append(f"  ... {len(p['fitting']) - 12} more (--json lists all)")
    return "\n".join(lines)


def main(args) -> int:
    p = plan(args)
    print(json.dumps(p, indent=2) if args.json else text(p))
    return 0
