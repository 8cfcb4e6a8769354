"""Stage 3 of Linguistic RL: the student's fine-tuning on the curriculum (an ``SFTTrainer`` subclass)."""

from __future__ import annotations

import logging

from trl import SFTConfig, SFTTrainer

from .._trl_defaults import peft_wrapping

logger = logging.getLogger(__name__)


def default_lora_config(r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules=("q_proj", "v_proj")):
    """The original's adapter: LoRA r=8, α=16, dropout 0.05 on q_proj/v_proj, causal LM."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules),
                      bias="none", task_type="CAUSAL_LM")


class LinguisticRLStudentTrainer(SFTTrainer):
    """``SFTTrainer`` for the student, with Linguistic RL's defaults.

    * ``model`` may be ``"default"`` (the embedded SmolLM2-135M-Instruct), a path, a hub id or a loaded model; the
      tokenizer is loaded with it when ``processing_class`` is not given.
    * Completion-only loss: the prompt (problem and strategy) is masked. ``args.completion_only_loss=False``
      trains on the whole sequence (the original's setting, kept for the pitfall reproduction).
    * LoRA by default: without ``peft_config``, an adapter is built from ``args.lora_*`` (r=8, α=16, dropout 0.05,
      q_proj/v_proj) unless ``args.use_peft`` is False.

    ``train_dataset`` is a curriculum from :func:`~weakstrong.lrl.build_curriculum` (conversational
    prompt/completion; the chat template is applied by TRL).
    """

    def __init__(self, model, args: SFTConfig | None = None, train_dataset=None, processing_class=None,
                 peft_config=None, **kwargs):
        from ..models import load_model, resolve_model_path

        if args is None:
            from .config import LinguisticRLConfig

            args = LinguisticRLConfig(output_dir="lrl-student", report_to="none")
        if args.completion_only_loss is None:
            args.completion_only_loss = True
        if isinstance(model, str):
            model = resolve_model_path(model)
        if processing_class is None:
            if isinstance(model, str):
                from transformers import AutoTokenizer

                processing_class = AutoTokenizer.from_pretrained(model)
            else:
                processing_class = load_model(model)[1]
        if peft_config is None and getattr(args, "use_peft", True):
            peft_config = default_lora_config(getattr(args, "lora_r", 8), getattr(args, "lora_alpha", 16),
                                              getattr(args, "lora_dropout", 0.05),
                                              getattr(args, "lora_target_modules", ("q_proj", "v_proj")))
        if train_dataset is not None and len(train_dataset):
            first = train_dataset[0]
            if not ("prompt" in first and "completion" in first) and "messages" not in first:
                raise ValueError("the student's train_dataset needs prompt/completion columns (build it with "
                                 "weakstrong.lrl.build_curriculum) or a messages column")
        with peft_wrapping():
            super().__init__(model=model, args=args, train_dataset=train_dataset, processing_class=processing_class,
                             peft_config=peft_config, **kwargs)
