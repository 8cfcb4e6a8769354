"""``LinguisticRLConfig``: TRL's ``SFTConfig`` (for the student) plus the teacher loop, curriculum and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from .. import _trl_defaults

CURRICULUM_COMPLETIONS = ("rationale", "answer")


@dataclass
class LinguisticRLConfig(SFTConfig):
    r"""
    Configuration for [`LinguisticRLTrainer`]: teacher reflection loop → strategy curriculum → student SFT → evaluation.

    Every [`~trl.SFTConfig`] field keeps its meaning and configures the student's fine-tuning (stage 3). Three
    defaults differ: `learning_rate=2e-4` (LoRA, as in the original), `completion_only_loss=True` (the prompt and
    its strategy are masked; set `False` only to reproduce the original's whole-sequence loss) and, left unset,
    `bf16`, `dataloader_pin_memory` and `activation_checkpointing` take what this machine needs (bf16 and pinned
    memory only where the accelerator supports them; checkpointing on, TRL's default). Teacher-loop metrics are
    accuracies (fractions); the student's `entropy` is in nats. Everything is written under `output_dir`: `teacher/` (journal,
    strategies, per-problem results), `curriculum/`, `student/` (the adapter), `report.md` and `report.json`.

    Parameters:
        batch_size (`int`, *optional*, defaults to `10`):
            Teacher problems per batch; the teacher writes one journal entry per batch.
        distill_every (`int`, *optional*, defaults to `5`):
            Distil the journal into a new strategy every this many batches.
        distill_at_end (`bool`, *optional*, defaults to `True`):
            Also distil after the last batch when the number of batches is not a multiple of `distill_every`.
        journal_examples (`int`, *optional*, defaults to `5`):
            Results shown to the teacher in each reflection, wrong and unparseable answers first.
        journal_tail_chars (`int`, *optional*, defaults to `5000`):
            Characters from the end of the journal that each distillation sees.
        initial_strategy (`str`, *optional*):
            Starting strategy; `None` uses the task's hand-written 4-step rule.
        strategy_max_chars (`int`, *optional*, defaults to `2000`):
            Longer distilled strategies are cut at a line break to this length (they enter every prompt).
        train_problems (`int`, *optional*, defaults to `100`):
            Problems the teacher solves in stage 1 (when no `train_dataset` is given).
        train_seed (`int`, *optional*, defaults to `42`):
            Seed of the teacher's problems.
        test_problems (`int`, *optional*, defaults to `150`):
            Held-out test problems for stage 4 (when no `eval_dataset` is given), spread over difficulties.
        test_seed (`int`, *optional*, defaults to `123`):
            Seed of the test problems. Test problems are excluded from the curriculum.
        balanced (`bool`, *optional*, defaults to `True`):
            Balanced labels in the generated problems and in the curriculum (per difficulty and label).
        faithful (`bool`, *optional*, defaults to `False`):
            The original generator ranges (easy problems are then always YES); for reproducing the pitfall.
        curriculum_size (`int`, *optional*):
            Curriculum examples; `None` uses `train_problems`. Examples beyond what the teacher's results can fill
            (balanced) are drawn fresh with the task's worked rationale (flagged `rationale_source="task"`).
        curriculum_seed (`int`, *optional*, defaults to `999`):
            Seed of the curriculum's selection, shuffling and fresh draws.
        use_teacher_rationale (`bool`, *optional*, defaults to `True`):
            Use the teacher's rationale when it was verified correct; `False` always uses the task's worked one.
        curriculum_completion (`str`, *optional*, defaults to `"rationale"`):
            `"rationale"` (reasoning + final answer line) or `"answer"` (final answer line only, like the original).
        teacher_temperature (`float`, *optional*, defaults to `0.0`):
            Teacher temperature for solving, reflecting and distilling (0 = greedy, the original's setting). Above 0,
            each request carries its own seed derived from `seed`, the batch and the problem.
        teacher_max_new_tokens (`int`, *optional*, defaults to `512`):
            Reply budget of a teacher solution.
        reflection_max_new_tokens (`int`, *optional*, defaults to `512`):
            Reply budget of a journal entry.
        distill_max_new_tokens (`int`, *optional*, defaults to `384`):
            Reply budget of a distilled strategy.
        resume (`bool`, *optional*, defaults to `True`):
            Continue a teacher loop found in `output_dir/teacher` (after its last completed step). A loop made with
            other settings (teacher, temperature, token budgets, problems...) is refused, with the differences named.
        restart_teacher_loop (`bool`, *optional*, defaults to `False`):
            Move a teacher loop found in `output_dir/teacher` aside (`teacher.replaced-<UTC time>`) and start afresh.
        use_peft (`bool`, *optional*, defaults to `True`):
            Train a LoRA adapter (below) when no `peft_config` is passed; `False` trains all weights.
        lora_r (`int`, *optional*, defaults to `8`):
            LoRA rank.
        lora_alpha (`int`, *optional*, defaults to `16`):
            LoRA scaling α.
        lora_dropout (`float`, *optional*, defaults to `0.05`):
            LoRA dropout.
        lora_target_modules (`list[str]`, *optional*, defaults to `["q_proj", "v_proj"]`):
            Modules that get LoRA adapters (the original's choice).
        evaluation_max_new_tokens (`int`, *optional*, defaults to `256`):
            Generation budget per test problem in stage 4 (greedy).
        evaluation_batch_size (`int`, *optional*, defaults to `16`):
            Test problems per generation batch in stage 4.
        evaluate_student_before (`bool`, *optional*, defaults to `True`):
            Evaluate the student before fine-tuning (with the final strategy in the prompt).
        evaluate_teacher (`bool`, *optional*, defaults to `True`):
            Evaluate the teacher with and without the final strategy.
    """

    # student defaults that differ from SFTConfig
    learning_rate: float = field(default=2e-4, metadata={"help": "Student learning rate (LoRA; the original's 2e-4)."})
    completion_only_loss: bool | None = field(
        default=True,
        metadata={"help": "Loss on the completion only (prompt and strategy masked). False = the original's "
                          "whole-sequence loss."},
    )

    # unset = what this machine needs (see weakstrong/_trl_defaults.py)
    dataloader_pin_memory: bool | None = _trl_defaults.pin_memory_field()
    activation_checkpointing: bool | None = _trl_defaults.activation_checkpointing_field()
    gradient_checkpointing: bool | None = _trl_defaults.gradient_checkpointing_field()

    # stage 1: teacher loop
    batch_size: int = field(default=10, metadata={"help": "Teacher problems per batch (one journal entry each)."})
    distill_every: int = field(default=5, metadata={"help": "Distil the journal into a new strategy every N batches."})
    distill_at_end: bool = field(default=True, metadata={"help": "Also distil after the last batch."})
    journal_examples: int = field(default=5, metadata={"help": "Results shown per reflection, errors first."})
    journal_tail_chars: int = field(default=5000, metadata={"help": "Journal characters each distillation sees."})
    initial_strategy: str | None = field(default=None, metadata={"help": "Starting strategy (None: task default)."})
    strategy_max_chars: int = field(default=2000, metadata={"help": "Cut longer distilled strategies to this."})
    train_problems: int = field(default=100, metadata={"help": "Problems the teacher solves in stage 1."})
    train_seed: int = field(default=42, metadata={"help": "Seed of the teacher's problems."})
    teacher_temperature: float = field(default=0.0, metadata={"help": "Teacher temperature (0 = greedy)."})
    teacher_max_new_tokens: int = field(default=512, metadata={"help": "Reply budget of a teacher solution."})
    reflection_max_new_tokens: int = field(default=512, metadata={"help": "Reply budget of a journal entry."})
    distill_max_new_tokens: int = field(default=384, metadata={"help": "Reply budget of a distilled strategy."})
    resume: bool = field(default=True, metadata={"help": "Resume the teacher loop found in output_dir/teacher."})
    restart_teacher_loop: bool = field(
        default=False, metadata={"help": "Move the teacher loop in output_dir/teacher aside and start afresh."})

    # data / stage 2: curriculum
    test_problems: int = field(default=150, metadata={"help": "Held-out test problems (stage 4)."})
    test_seed: int = field(default=123, metadata={"help": "Seed of the test problems."})
    balanced: bool = field(default=True, metadata={"help": "Balanced labels in problems and curriculum."})
    faithful: bool = field(default=False, metadata={"help": "The original generator ranges (pitfall reproduction)."})
    curriculum_size: int | None = field(default=None, metadata={"help": "Curriculum examples (None: train_problems)."})
    curriculum_seed: int = field(default=999, metadata={"help": "Seed of the curriculum selection and fresh draws."})
    use_teacher_rationale: bool = field(
        default=True, metadata={"help": "Use the teacher's verified rationale (else the task's worked one)."}
    )
    curriculum_completion: str = field(
        default="rationale",
        metadata={"help": "'rationale' (reasoning + answer line) or 'answer' (answer line only).",
                  "choices": list(CURRICULUM_COMPLETIONS)},
    )

    # stage 3: student adapter
    use_peft: bool = field(default=True, metadata={"help": "LoRA adapter when no peft_config is passed."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"], metadata={"help": "Modules that get LoRA adapters."}
    )

    # stage 4: evaluation
    evaluation_max_new_tokens: int = field(default=256, metadata={"help": "Generation budget per test problem."})
    evaluation_batch_size: int = field(default=16, metadata={"help": "Test problems per generation batch."})
    evaluate_student_before: bool = field(default=True, metadata={"help": "Evaluate the student before training."})
    evaluate_teacher: bool = field(default=True, metadata={"help": "Evaluate the teacher with/without the strategy."})

    def __post_init__(self):
        _trl_defaults.resolve(self)  # bf16, pin_memory, activation checkpointing: what this machine needs
        super().__post_init__()
        positive = {"batch_size": self.batch_size, "distill_every": self.distill_every,
                    "train_problems": self.train_problems, "test_problems": self.test_problems,
                    "teacher_max_new_tokens": self.teacher_max_new_tokens,
                    "reflection_max_new_tokens": self.reflection_max_new_tokens,
                    "distill_max_new_tokens": self.distill_max_new_tokens, "lora_r": self.lora_r,
                    "evaluation_max_new_tokens": self.evaluation_max_new_tokens,
                    "evaluation_batch_size": self.evaluation_batch_size}
        bad = {k: v for k, v in positive.items() if int(v) != v or v < 1}
        if bad:
            raise ValueError(f"{sorted(bad)} must be integers >= 1, got {bad}. E.g. batch_size=10, distill_every=5, "
                             "train_problems=100 (the original's settings).")
        if self.journal_examples < 0:
            raise ValueError(f"journal_examples must be >= 0 (the original shows 5), got {self.journal_examples}.")
        if self.journal_tail_chars < 200:
            raise ValueError(f"journal_tail_chars must be >= 200 so the distillation sees at least one entry "
                             f"(the original uses 5000), got {self.journal_tail_chars}.")
        if self.strategy_max_chars < 50:
            raise ValueError(f"strategy_max_chars must be >= 50, got {self.strategy_max_chars}.")
        if self.curriculum_size is not None and self.curriculum_size < 1:
            raise ValueError(f"curriculum_size must be >= 1, or None to use train_problems; got {self.curriculum_size}.")
        if self.teacher_temperature < 0:
            raise ValueError(f"teacher_temperature must be >= 0 (0 = greedy), got {self.teacher_temperature}.")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout must be in [0, 1) (default 0.05), got {self.lora_dropout}.")
        if self.lora_alpha <= 0:
            raise ValueError(f"lora_alpha must be > 0 (default 16), got {self.lora_alpha}.")
        if self.curriculum_completion not in CURRICULUM_COMPLETIONS:
            raise ValueError(f"curriculum_completion must be one of {CURRICULUM_COMPLETIONS}, "
                             f"got {self.curriculum_completion!r}.")
        if self.initial_strategy is not None and not self.initial_strategy.strip():
            raise ValueError("initial_strategy is empty; pass None for the task's default strategy.")
        if self.balanced and self.faithful:
            raise ValueError("faithful=True uses the original generator, whose easy problems are always YES, so the "
                             "problems cannot be balanced: also set balanced=False (or keep faithful=False).")
