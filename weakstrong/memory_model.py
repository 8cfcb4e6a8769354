"""Per-GPU memory model of SFT and WMSS (defaults: the paper's settings, Qwen3-4B / Qwen3-8B, 8 GPUs, ZeRO-3).

``breakdown(arch, mode, path)`` returns the bytes per GPU of weights, gradients, optimizer state, ZeRO-3
gathered weights, activations and the loss's logits / temporaries, and a peak; ``weakstrong plan`` runs it on a
user's model and hardware and searches which micro-batch / ZeRO stage / checkpointing fits (:func:`fit_options`);
``python benchmarks/methods/wmss_memory_model.py`` prints the assumptions and the paper-settings table. It is an
estimate from formulas, not a measurement: each term is listed with its formula so that a reader can check it, and
``tests/wmss/test_memory_model.py`` checks the parameter counts against real transformers models and the loss
terms against the tensors the kernels actually keep.

Modes: ``sft`` (one model), ``wmss_full`` (strong + weak, both trained), ``wmss_frozen_weak`` (the weak model
frozen, a no-grad forward), ``wmss_lora`` (one base copy, two trainable LoRA adapters, the LM head frozen).
Paths: ``logits`` (``[N, V]`` logits materialised: HF's causal-LM loss for SFT, ``mixed_cross_entropy`` on the
supervised positions for WMSS), ``hidden`` (last hidden states into the chunked ``linear_*`` kernels).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

BF16, FP32 = 2, 4
GiB = 2**30


# --------------------------------------------------------------------------------------------- architecture


@dataclass(frozen=True)
class Arch:
    """A Llama-family decoder (Llama, Qwen2, Qwen3) as the formulas need it."""

    name: str
    vocab: int
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    tied: bool
    qk_norm: bool = False  # Qwen3: RMSNorm over head_dim on q and k
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    source: str = ""

    @classmethod
    def from_config(cls, cfg, name: str | None = None) -> "Arch":
        """From a transformers ``LlamaConfig`` / ``Qwen2Config`` / ``Qwen3Config`` (or a dict of the same keys)."""

        def get(key, default=None):
            return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)

        model_type = get("model_type", "llama")
        if model_type not in ("llama", "qwen2", "qwen3"):
            raise ValueError(f"Arch.from_config supports llama, qwen2 and qwen3 configs, got model_type={model_type!r}")
        hidden, heads = get("hidden_size"), get("num_attention_heads")
        attention_bias = bool(get("attention_bias", False))
        return cls(
            name=name or model_type,
            vocab=get("vocab_size"),
            hidden=hidden,
            layers=get("num_hidden_layers"),
            intermediate=get("intermediate_size"),
            heads=heads,
            kv_heads=get("num_key_value_heads") or heads,
            head_dim=get("head_dim") or hidden // heads,
            tied=bool(get("tie_word_embeddings", False)),
            qk_norm=model_type == "qwen3",
            qkv_bias=True if model_type == "qwen2" else attention_bias,
            o_bias=False if model_type == "qwen2" else attention_bias,
            mlp_bias=bool(get("mlp_bias", False)) if model_type == "llama" else False,
        )

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim


# Config values from the models' published config.json (also quoted in their model cards: 36 layers, 32 Q / 8 KV
# heads; Qwen3-4B-Base 4.0B parameters, 3.6B non-embedding; Qwen3-8B 8.2B, 6.95B non-embedding — which
# param_count reproduces, see the tests).
QWEN3_4B = Arch(
    "Qwen3-4B", vocab=151_936, hidden=2560, layers=36, intermediate=9728, heads=32, kv_heads=8, head_dim=128,
    tied=True, qk_norm=True,
    source="config.json of Qwen/Qwen3-4B (as copied in e.g. huggingface.co/MultiRL/qwen3_4b_instruct_sft/blob/main/"
           "config.json): hidden_size 2560, num_hidden_layers 36, intermediate_size 9728, num_attention_heads 32, "
           "num_key_value_heads 8, head_dim 128, vocab_size 151936, tie_word_embeddings true, attention_bias false; "
           "model card of Qwen/Qwen3-4B-Base (quantamrkt.com/files/qwen--qwen3-4b-base/README.md): 4.0B params, "
           "3.6B non-embedding (4.0 = 3.6 + one 0.39B embedding: tied), 36 layers, GQA 32/8; the -Base checkpoint the "
           "paper trains has this architecture",
)
QWEN3_8B = Arch(
    "Qwen3-8B", vocab=151_936, hidden=4096, layers=36, intermediate=12288, heads=32, kv_heads=8, head_dim=128,
    tied=False, qk_norm=True,
    source="config.json of Qwen/Qwen3-8B (commit 'Copy config.json from Qwen/Qwen3-8B', huggingface.co/thejaminator/"
           "qwen-hook-layer-9/commit/478fb720f1f3ced834fce0275b55b2732d438edc): hidden_size 4096, num_hidden_layers "
           "36, intermediate_size 12288, num_attention_heads 32, num_key_value_heads 8, head_dim 128, vocab_size "
           "151936, tie_word_embeddings false, attention_bias false; Qwen3-8B model card (quoted in "
           "reddit.com/r/LocalLLaMA/comments/1k9qxbl): 8.2B params, 6.95B non-embedding (8.2 = 6.95 + two 0.62B "
           "matrices: untied), 36 layers, GQA 32/8; Qwen3-8B-Base has this architecture",
)

QWEN25_3B = Arch(
    "Qwen2.5-3B", vocab=151_936, hidden=2048, layers=36, intermediate=11008, heads=16, kv_heads=2, head_dim=128,
    tied=True, qkv_bias=True,
    source="config.json of Qwen/Qwen2.5-3B: hidden_size 2048, num_hidden_layers 36, intermediate_size 11008, "
           "num_attention_heads 16, num_key_value_heads 2, vocab_size 151936, tie_word_embeddings true (Qwen2: "
           "q/k/v biases); model card: 3.09B parameters, 2.77B non-embedding, which param_count reproduces",
)
#: hub ids whose architecture is known without a download (the -Base and instruct checkpoints share it)
KNOWN = {"qwen/qwen3-4b-base": QWEN3_4B, "qwen/qwen3-4b": QWEN3_4B, "qwen/qwen3-8b-base": QWEN3_8B,
         "qwen/qwen3-8b": QWEN3_8B, "qwen/qwen2.5-3b": QWEN25_3B, "qwen/qwen2.5-3b-instruct": QWEN25_3B}

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def linear_shapes(arch: Arch) -> dict:
    """``{name: (in_features, out_features, has_bias)}`` of one decoder layer's linear layers."""
    h, i = arch.hidden, arch.intermediate
    return {
        "q_proj": (h, arch.q_dim, arch.qkv_bias),
        "k_proj": (h, arch.kv_dim, arch.qkv_bias),
        "v_proj": (h, arch.kv_dim, arch.qkv_bias),
        "o_proj": (arch.q_dim, h, arch.o_bias),
        "gate_proj": (h, i, arch.mlp_bias),
        "up_proj": (h, i, arch.mlp_bias),
        "down_proj": (i, h, arch.mlp_bias),
    }


def layer_param_count(arch: Arch) -> int:
    linears = sum(n_in * n_out + (n_out if bias else 0) for n_in, n_out, bias in linear_shapes(arch).values())
    norms = 2 * arch.hidden + (2 * arch.head_dim if arch.qk_norm else 0)
    return linears + norms


def param_count(arch: Arch) -> int:
    """Parameters of the causal LM, counting a tied embedding / LM head once (as ``model.parameters()`` does)."""
    embed = arch.vocab * arch.hidden
    head = 0 if arch.tied else arch.vocab * arch.hidden
    return embed + arch.layers * layer_param_count(arch) + arch.hidden + head


def lora_param_count(arch: Arch, rank: int, targets=ALL_LINEAR) -> int:
    """Parameters of one LoRA adapter (A: r x in, B: out x r) on ``targets`` of every decoder layer."""
    shapes = linear_shapes(arch)
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {list(shapes)}")
    return arch.layers * sum(rank * (shapes[t][0] + shapes[t][1]) for t in targets)


def logits_bytes(n_tokens: int, vocab: int, dtype_bytes: int) -> int:
    """One ``[n_tokens, vocab]`` logits (or logit-gradient) tensor."""
    return n_tokens * vocab * dtype_bytes


# --------------------------------------------------------------------------------------------- settings


def _cuda_chunk(n_tokens: int, vocab: int) -> int:
    """Token chunk of the hidden-state kernels on CUDA (``kernels/linear.py``'s default)."""
    import torch

    from weakstrong.kernels.linear import default_token_chunk

    return default_token_chunk(n_tokens, vocab, torch.device("cuda"))


@dataclass(frozen=True)
class Settings:
    seq_len: int = 4096  # paper: max length 4096
    supervised: int = 4096  # supervised tokens per sequence (upper bound: every position)
    micro_batch: int = 1
    gpus: int = 8
    lora_rank: int = 16
    lora_targets: tuple = ALL_LINEAR
    gpu_gib: float = 80.0  # paper: 8 x H800 80 GB
    chunk_tokens: int | None = None  # hidden path: tokens per chunk (None: the kernels' CUDA default)
    zero_stage: int = 3  # DeepSpeed ZeRO stage 0 (plain data parallel) .. 3
    checkpointing: bool = True  # gradient checkpointing on every decoder layer
    notes: tuple = field(default=())

    def chunk(self, vocab: int) -> int:
        return self.chunk_tokens or _cuda_chunk(self.micro_batch * self.supervised, vocab)


ASSUMPTIONS = """\
Assumptions (per GPU; every figure is an estimate from these formulas, not a measurement):
- 8 GPUs, DeepSpeed ZeRO-3, bf16 mixed precision as DeepSpeed runs it: bf16 parameters and bf16 gradients
  (grad_accum_dtype = model dtype), fp32 master weights + AdamW exp_avg + exp_avg_sq = 12 B/param, all of them
  partitioned over the 8 GPUs: (2 + 2 + 12) B x params / 8. Frozen weights (the frozen weak model, the LoRA base)
  are bf16 and partitioned too (2 B x params / 8), with no gradient or optimizer state.
- ZeRO-3 gathers each module's full bf16 weights for its forward/backward: peak gathered = the largest of (one
  decoder layer, the LM head(s) in use at the loss) + the prefetch bucket (HF "auto": 0.9 H^2 elements).
- Optimizer step transient: DeepSpeed upcasts one sub-group's gradient partition to fp32 (sub_group_size 1e9 >
  the partition here, so the whole partition: 4 B x trainable params / 8); activations are freed by then.
- Micro-batch 1 x 4096 tokens; all 4096 positions supervised (upper bound; the loss terms scale with N).
- Gradient checkpointing on every decoder layer (TRL's SFTConfig default gradient_checkpointing=True): each layer
  keeps its bf16 input (2·s·H B); the backward recomputes one layer at a time. Flash attention (no s^2 terms).
- One layer's saved activations (bf16, HF Qwen3 code: RMSNorm keeps an fp32 copy of its input + its bf16 output,
  q/k RMSNorm likewise, attention keeps q, k, v, output and an fp32 logsumexp, SwiGLU keeps gate, up, act(gate),
  act(gate)·up) = s·(12H + 4q + 4kv + 4·heads + 8I) B, + s·6(q + kv) B with Qwen3's q/k norm; q = heads·head_dim,
  kv = kv_heads·head_dim. Backward working set of that layer: its activations + the gradients of its largest
  activations, s·(4I + 4H) B. LoRA adds s·2r B per adapted linear. Final norm: s·6H B per model.
- WMSS, both models trained: both forwards (and their layer checkpoints) are alive at the loss; the backward
  recomputes one layer of one model at a time. A frozen weak model runs without grad: it keeps only its output.
- Loss, logits path. SFT: HF's causal-LM loss on all s positions as TRL's SFTTrainer runs it: bf16 logits (kept
  in the output) + the fp32 log_softmax output (its fp32 input is freed after the forward), then in the backward
  the fp32 gradients of the NLL and of the log_softmax: peak (2 + 4 + 4 + 4)·s·V = 14·s·V B (TRL #7244
  measured 19.9 GiB for the naive path at 8,192 tokens, i.e. 17·V B per token). WMSS (mixed_cross_entropy on N supervised positions): both bf16 logits [N, V] (saved for the backward)
  + both bf16 logit gradients: 4·2·N·V B (frozen weak: 3·2·N·V B).
- Loss, hidden-state path (kernels/linear.py on CUDA, chunk c = 2^27 // V rounded down to 64 = 832 tokens): one
  chunk's logits and logit gradients per model (2·2·c·V B each) and the LM head's full bf16 weight gradient
  [V, H] (2·V·H B, before ZeRO-3 reduce-scatters it) per trained head; in WMSS both heads stay gathered for the
  call. LoRA mode: the LM head is frozen (not a LoRA target), no head gradient.
- Other ZeRO stages (weakstrong plan): stage 2 keeps the full bf16 weights on every GPU (no gathering), stage 1
  also the full gradients, stage 0 also the full optimizer state; the same bytes per parameter otherwise.
  Without gradient checkpointing every layer's activations are kept (layers x one layer's saved activations).
- Not modelled: CUDA context + NCCL buffers + allocator fragmentation (typically 1-3 GiB), ZeRO-3 reduce buckets
  (H^2 elements), the data/tokenizer, evaluation, the λ = 1 shortcut.
"""

MODES = ("sft", "wmss_full", "wmss_frozen_weak", "wmss_lora")
PATHS = ("logits", "hidden")


# --------------------------------------------------------------------------------------------- the model


def layer_activation_bytes(arch: Arch, s: int, lora_rank: int = 0, lora_targets=()) -> int:
    """Saved activations of one decoder layer for ``s`` tokens (bf16 model; see ASSUMPTIONS)."""
    h, i, q, kv = arch.hidden, arch.intermediate, arch.q_dim, arch.kv_dim
    per_token = 12 * h + 4 * q + 4 * kv + 4 * arch.heads + 8 * i
    if arch.qk_norm:
        per_token += 6 * (q + kv)
    per_token += len(lora_targets) * BF16 * lora_rank
    return s * per_token


def loss_terms(arch: Arch, mode: str, path: str, st: Settings) -> dict:
    """Bytes of the loss's logits / temporaries at the loss's peak, by term."""
    v, n = arch.vocab, st.micro_batch * st.supervised
    head_grad = BF16 * v * arch.hidden
    if path == "logits":
        if mode == "sft":
            s = st.micro_batch * st.seq_len
            return {"bf16 logits [s,V]": logits_bytes(s, v, BF16), "fp32 log_softmax output [s,V]":
                    logits_bytes(s, v, FP32), "fp32 grads (NLL, log_softmax) [s,V] x2": 2 * logits_bytes(s, v, FP32)}
        trained = 1 if mode == "wmss_frozen_weak" else 2
        return {"bf16 logits [N,V] x2": 2 * logits_bytes(n, v, BF16),
                f"bf16 logit grads [N,V] x{trained}": trained * logits_bytes(n, v, BF16)}
    c = min(st.chunk(v), n)
    models = 1 if mode == "sft" else 2
    trained_heads = {"sft": 1, "wmss_full": 2, "wmss_frozen_weak": 1, "wmss_lora": 0}[mode]
    grads_in_chunk = {"sft": 1, "wmss_full": 2, "wmss_frozen_weak": 1, "wmss_lora": 2}[mode]
    terms = {f"chunk logits [{c},V] x{models}": models * logits_bytes(c, v, BF16),
             f"chunk logit grads [{c},V] x{grads_in_chunk}": grads_in_chunk * logits_bytes(c, v, BF16)}
    if trained_heads:
        terms[f"LM head weight grad [V,H] x{trained_heads}"] = trained_heads * head_grad
    return terms


def breakdown(arch: Arch, mode: str, path: str, st: Settings = Settings()) -> dict:
    """Per-GPU bytes of one configuration: the categories, their formulas' terms and the peak."""
    if mode not in MODES or path not in PATHS:
        raise ValueError(f"mode must be one of {MODES} and path one of {PATHS}")
    p, g = param_count(arch), st.gpus
    s = st.micro_batch * st.seq_len
    lora = mode == "wmss_lora"
    p_lora = lora_param_count(arch, st.lora_rank, st.lora_targets) if lora else 0
    trained = {"sft": p, "wmss_full": 2 * p, "wmss_frozen_weak": p, "wmss_lora": 2 * p_lora}[mode]
    frozen = {"sft": 0, "wmss_full": 0, "wmss_frozen_weak": p, "wmss_lora": p}[mode]
    if st.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {st.zero_stage}")
    # ZeRO partitions the optimizer state from stage 1, the gradients from 2, the weights at 3
    part_opt, part_grad, part_w = (g if st.zero_stage >= k else 1 for k in (1, 2, 3))
    weights = (BF16 * (trained + frozen)) // part_w
    grads = (BF16 * trained) // part_grad
    optimizer = (3 * FP32 * trained) // part_opt
    step_transient = (FP32 * trained) // part_opt

    # activations: with checkpointing, each model with grad keeps every layer's input and recomputes one layer at a
    # time (its activations + gradients); without, it keeps every layer's activations, and the backward adds one
    # layer's activation gradients
    with_grad = {"sft": 1, "wmss_full": 2, "wmss_frozen_weak": 1, "wmss_lora": 2}[mode]
    targets = st.lora_targets if lora else ()
    layer = layer_activation_bytes(arch, s, st.lora_rank, targets)
    if st.checkpointing:
        checkpoints = with_grad * (arch.layers * BF16 * s * arch.hidden + 6 * s * arch.hidden)
        layer_bwd = layer + s * (4 * arch.intermediate + 4 * arch.hidden)
    else:
        checkpoints = with_grad * (arch.layers * layer + 6 * s * arch.hidden)
        layer_bwd = s * (4 * arch.intermediate + 4 * arch.hidden)
    outputs = (2 - with_grad if mode != "sft" else 0) * BF16 * st.micro_batch * st.supervised * arch.hidden
    activations = checkpoints + outputs + layer_bwd

    loss = loss_terms(arch, mode, path, st)
    loss_total = sum(loss.values())

    # ZeRO-3 gathered bf16 weights (below stage 3 the weights are resident and counted in ``weights``)
    prefetch = BF16 * int(0.9 * arch.hidden**2)
    layer_w = BF16 * layer_param_count(arch)
    head_w = BF16 * arch.vocab * arch.hidden
    heads_at_loss = 1 if (mode == "sft" or lora or path == "logits") else 2
    gathered_layer = layer_w + prefetch if st.zero_stage == 3 else 0
    gathered_loss = heads_at_loss * head_w + prefetch if st.zero_stage == 3 else 0
    gathered = max(gathered_layer, gathered_loss)

    persistent = weights + grads + optimizer
    phase_loss = checkpoints + outputs + gathered_loss + loss_total
    phase_layer = checkpoints + outputs + gathered_layer + layer_bwd
    peak = persistent + max(phase_loss, phase_layer, step_transient)
    return {
        "arch": arch.name, "mode": mode, "path": path, "params": p, "trainable": trained,
        "weights": weights, "grads": grads, "optimizer": optimizer, "zero3_gathered": gathered,
        "activations": activations, "activation_terms": {"layer checkpoints + final norm": checkpoints,
                                                         "frozen model outputs": outputs,
                                                         "one layer recompute + grads": layer_bwd},
        "loss": loss_total, "loss_terms": loss, "step_transient": step_transient,
        "peak": peak, "peak_phase": max((phase_loss, "loss"), (phase_layer, "layer backward"),
                                        (step_transient, "optimizer step"))[1],
        "fits": peak <= st.gpu_gib * GiB,
        "zero_stage": st.zero_stage, "checkpointing": st.checkpointing, "micro_batch": st.micro_batch,
        "seq_len": st.seq_len, "gpus": st.gpus,
    }


# --------------------------------------------------------------------------------------------- output


def _g(b: int) -> str:
    return f"{b / GiB:.2f}"


def table(archs=(QWEN3_4B, QWEN3_8B), st: Settings = Settings()) -> str:
    lines = [
        "| model | mode | loss path | trainable params | weights | grads | optimizer | ZeRO-3 gathered | activations "
        "| loss (logits / temporaries) | peak GiB (phase) | fits 80 GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"sft": "SFT", "wmss_full": "WMSS full", "wmss_frozen_weak": "WMSS full, weak frozen",
              "wmss_lora": f"WMSS LoRA (r={st.lora_rank}, all linear, 2 adapters)"}
    for arch in archs:
        for mode in MODES:
            for path in PATHS:
                b = breakdown(arch, mode, path, st)
                lines.append(
                    f"| {arch.name} | {labels[mode]} | {path} | {b['trainable'] / 1e9:.3f} B | {_g(b['weights'])} | "
                    f"{_g(b['grads'])} | {_g(b['optimizer'])} | {_g(b['zero3_gathered'])} | {_g(b['activations'])} | "
                    f"{_g(b['loss'])} | {_g(b['peak'])} ({b['peak_phase']}) | {'yes' if b['fits'] else 'no'} |")
    return "\n".join(lines)


def loss_sweep(archs, st: Settings, tokens=(4096, 8192, 16384, 32768)) -> str:
    lines = ["| model | supervised tokens / micro-batch | logits path | hidden path | hidden / logits |", "|---|---|---|---|---|"]
    for arch in archs:
        for n in tokens:
            t = replace(st, micro_batch=1, seq_len=n, supervised=n)
            lg = sum(loss_terms(arch, "wmss_full", "logits", t).values())
            hd = sum(loss_terms(arch, "wmss_full", "hidden", t).values())
            lines.append(f"| {arch.name} | {n:,} | {_g(lg)} | {_g(hd)} | 1/{lg / hd:.1f} |")
    return "\n".join(lines)


def report(st: Settings = Settings()) -> str:
    archs = (QWEN3_4B, QWEN3_8B)
    out = ["# WMSS memory model: per-GPU bytes at the paper's settings (estimate)", "", "```", ASSUMPTIONS.rstrip(),
           "```", "", "Architectures:"]
    for a in archs:
        out.append(f"- **{a.name}**: {param_count(a) / 1e9:.3f} B parameters "
                   f"({(param_count(a) - a.vocab * a.hidden * (1 if a.tied else 2)) / 1e9:.3f} B non-embedding); "
                   f"LoRA r={st.lora_rank} on {', '.join(st.lora_targets)}: "
                   f"{lora_param_count(a, st.lora_rank, st.lora_targets) / 1e6:.1f} M per adapter. Source: {a.source}.")
    out += ["", "All figures GiB per GPU.", "", table(archs, st), ""]
    for a in archs:
        b_l = breakdown(a, "wmss_full", "logits", st)
        b_h = breakdown(a, "wmss_full", "hidden", st)
        out.append(f"- {a.name}, WMSS full: loss terms, logits path: "
                   + "; ".join(f"{k} {_g(v)}" for k, v in b_l["loss_terms"].items())
                   + " — hidden path: " + "; ".join(f"{k} {_g(v)}" for k, v in b_h["loss_terms"].items()) + ".")
    out += ["", "Loss term alone (GiB per GPU) for more supervised tokens per micro-batch (e.g. padding-free "
            "batches), WMSS full mode, everything else as above:", "", loss_sweep(archs, st), ""]
    out += ["", "Peak = weights + grads + optimizer + the largest of three phases: the loss (checkpoints + gathered "
            "LM head(s) + loss terms), one layer's backward (checkpoints + gathered layer + its recompute and "
            "gradients), the optimizer step (fp32 gradient partition).", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------- planning

MODE_NAMES = {"sft": "sft", "wmss": "wmss_full", "wmss_full": "wmss_full", "frozen-weak": "wmss_frozen_weak",
              "wmss_frozen_weak": "wmss_frozen_weak", "lora": "wmss_lora", "wmss_lora": "wmss_lora"}
#: GiB per GPU left for what the model does not count (CUDA context, NCCL buffers, fragmentation: 1-3 GiB)
RESERVE_GIB = 3.0


def load_arch(model: str) -> Arch:
    """The architecture of ``model``: a ``config.json`` path, a folder holding one, a known hub id (Qwen3-4B/8B(-Base),
    Qwen2.5-3B(-Instruct): built in, no download) or another hub id (its config.json is downloaded; offline, the
    error says to pass the file)."""
    from .cli import UserError

    path = os.path.join(model, "config.json") if os.path.isdir(model) else model
    if os.path.isfile(path):
        try:
            with open(path) as f:
                cfg = json.load(f)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not a JSON config ({err})") from err
        try:
            return Arch.from_config(cfg, name=cfg.get("_name_or_path") or os.path.basename(os.path.dirname(
                os.path.abspath(path))) or cfg.get("model_type"))
        except (ValueError, TypeError) as err:
            raise UserError(f"{path}: {err}") from err
    if model.lower() in KNOWN:
        return KNOWN[model.lower()]
    if os.path.exists(model) or model.endswith(".json"):
        raise UserError(f"{model}: no config.json there")
    try:
        from huggingface_hub import hf_hub_download

        cfg_path = hf_hub_download(model, "config.json")
    except Exception as err:  # offline (HF_HUB_OFFLINE), no such repo, no network, gated...
        raise UserError(f"cannot fetch the config of {model!r} from the hub ({type(err).__name__}: {err}). Pass the "
                        "path of its config.json (or the model's folder) instead; built in without a download: "
                        f"{', '.join(sorted(KNOWN))}") from err
    return load_arch(cfg_path)


def fit_options(arch: Arch, mode: str, path: str, st: Settings, micro_batches=(1, 2, 4, 8, 16, 32),
                stages=(0, 1, 2, 3), reserve_gib: float = RESERVE_GIB) -> list[dict]:
    """Every (ZeRO stage, checkpointing, micro-batch) with its peak and whether it fits ``gpu_gib - reserve_gib``.

    Sorted by preference among those that fit: the largest micro-batch first (fewer accumulation steps, better GPU
    use), then no checkpointing (it saves a recompute, about a third of the compute), then the lowest ZeRO stage
    (less communication)."""
    out = []
    budget = (st.gpu_gib - reserve_gib) * GiB
    for stage in stages:
        for ckpt in (False, True):
            for mb in micro_batches:
                b = breakdown(arch, mode, path, replace(st, zero_stage=stage, checkpointing=ckpt, micro_batch=mb))
                out.append({"zero_stage": stage, "checkpointing": ckpt, "micro_batch": mb, "peak_gib": b["peak"] / GiB,
                            "peak_phase": b["peak_phase"], "fits": b["peak"] <= budget})
    out.sort(key=lambda o: (not o["fits"], -o["micro_batch"], o["checkpointing"], o["zero_stage"]))
    return out
