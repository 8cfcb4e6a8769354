"""Helpers for multi-process runs started by ``accelerate launch`` / ``torchrun`` (the recipes call them).

* :func:`setup` — on a machine without CUDA and with several processes, create Accelerate's ``PartialState`` with
  the ``gloo`` backend *before* any ``TrainingArguments``/Trainer exists (DeepSpeed would otherwise ask for
  ``ccl``/``nccl``). On GPUs it does nothing: Accelerate picks NCCL itself.
* :func:`teardown` — destroy the process group at exit (leaving it to interpreter shutdown aborts some runs).
* :func:`distributed_run` — both, as a context manager.
* :func:`shard_indices` / :func:`gather_in_order` — split a list of row positions over the processes and put the
  per-process results back in the original order (used by WMSS phase 2).
* :func:`full_shape`, :func:`zero3_params`, :func:`gathered_for_forward`, :func:`full_state_dict` — DeepSpeed ZeRO-3
  partitioned parameters: their full shape, a module's partitioned parameters, plain forwards outside the engine
  (WMSS phase 2), the full state dict for saving.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np
import torch


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup():
    """Create the process group early where needed (several processes, no CUDA → gloo). Returns the state.

    DeepSpeed: ``PartialState(backend="gloo")`` (DeepSpeed's own ``init_distributed`` with gloo). Anything else
    (DDP, FSDP): Accelerate's multi-CPU mode (``ACCELERATE_USE_CPU=true``, which ``TrainingArguments`` reads, and
    ``PartialState(cpu=True, backend="gloo")``); without it Accelerate sees no accelerator and silently runs every
    process as an independent single-process job.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.cuda.is_available():
        return None
    from accelerate import PartialState

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return PartialState(backend="gloo")
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        # Accelerate (1.15) turns an FSDP config into DistributedType.FSDP only on MULTI_GPU/XPU/NPU/... states, never
        # on MULTI_CPU: on a CPU the run would silently be plain DDP (or independent processes). Refuse instead.
        raise RuntimeError("FSDP/FSDP2 needs an accelerator: Accelerate does not apply FSDP to multi-CPU runs (it "
                           "would silently train with plain DDP). On CPU use recipes/accelerate/ddp.yaml, zero2.yaml "
                           "or zero3.yaml.")
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return PartialState(cpu=True, backend="gloo")


def trainer_defaults() -> dict:
    """``TrainingArguments`` defaults a machine without CUDA needs: ``bf16=False`` (TRL's default bf16 is refused
    there) and, with several processes, ``ddp_backend="gloo"`` (without it the arguments rebuild Accelerate's state
    with no backend and see one process under DeepSpeed). Empty with CUDA. A config or command line still wins."""
    if torch.cuda.is_available():
        return {}
    # TRL's SFTConfig defaults to bf16, which transformers refuses on a machine without CUDA
    out = {"bf16": False}
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        out["ddp_backend"] = "gloo"
    return out


def teardown():
    """Wait for every process, then destroy the default process group (if any)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


@contextlib.contextmanager
def distributed_run():
    setup()
    try:
        yield
    finally:
        teardown()


def shard_indices(n: int, rank: int, num_processes: int) -> np.ndarray:
    """The contiguous block of ``range(n)`` that process ``rank`` handles (sizes differ by at most one)."""
    bounds = np.linspace(0, n, num_processes + 1).round().astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)


def gather_in_order(values: np.ndarray, n: int, accelerator) -> np.ndarray:
    """Concatenate every process's :func:`shard_indices` block of ``values`` (float64) back into ``[n]`` order."""
    if accelerator.num_processes == 1:
        return np.asarray(values, dtype=np.float64)
    from accelerate.utils import gather_object

    blocks = gather_object([(accelerator.process_index, np.asarray(values, dtype=np.float64).tolist())])
    out = np.zeros(n, dtype=np.float64)
    for rank, vals in blocks:
        idx = shard_indices(n, rank, accelerator.num_processes)
        if len(idx) != len(vals):
            raise RuntimeError(f"process {rank} returned {len(vals)} values for {len(idx)} rows")
        out[idx] = vals
    return out


def full_shape(param) -> torch.Size:
    """A parameter's shape, also when ZeRO-3 has partitioned it (``ds_shape``)."""
    return getattr(param, "ds_shape", None) or param.shape


def zero3_params(module) -> list:
    return [p for p in module.parameters() if hasattr(p, "ds_id")]


@contextlib.contextmanager
def gathered_for_forward(module):
    """Make a module whose parameters ZeRO-3 partitioned usable in plain forwards on one process.

    Phase 2 runs before the training engine exists and each process measures its own rows, so the full parameters
    are gathered once (read-only, ``modifier_rank=None``) for the whole pass and re-partitioned afterwards. A no-op
    for ordinary parameters (one process, DDP, ZeRO-1/2).
    """
    params = zero3_params(module)
    if not params:
        yield module
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield module


def full_state_dict(model, accelerator) -> dict | None:
    """The model's full state dict (clones, on CPU) when ZeRO-3 partitioned it, else ``None`` (use the model's own).

    Collective: every process must call it.
    """
    params = zero3_params(model)
    if not params:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        if accelerator.is_main_process:
            return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    return None
