"""``LinguisticRLTrainer``: teacher loop → curriculum → student SFT → evaluation, in one ``train()``."""

from __future__ import annotations

import inspect
import json
import logging
import time
from pathlib import Path
from typing import Any

from .config import LinguisticRLConfig
from .curriculum import build_curriculum, curriculum_summary
from .evaluation import evaluate, majority_baseline
from .loop import CLI_SETTING_NAMES, LoopResult, ReflectionLoop
from .report import write_report
from .student import LinguisticRLStudentTrainer

logger = logging.getLogger(__name__)


class LinguisticRLTrainer:
    """Linguistic RL end to end.

    Args:
        model: the student — ``"default"`` (embedded SmolLM2-135M-Instruct), a path, a hub id or a loaded model.
        teacher: a :class:`~weakstrong.teachers.Teacher` (``TransformersTeacher``, ``OpenAICompatibleTeacher`` or any
            chat backend), or a string, loaded as ``TransformersTeacher(string)``.
        task: the verifiable task (default :class:`~weakstrong.tasks.MeetingRoomsTask`).
        args: a :class:`LinguisticRLConfig` (its SFTConfig fields configure the student's fine-tuning).
        train_dataset: the teacher's problems (default: ``args.train_problems`` generated with ``args.train_seed``).
        eval_dataset: the held-out test set (default: ``args.test_problems`` generated with ``args.test_seed``).
        processing_class: the student's tokenizer (loaded with the model when omitted).
        peft_config: the student's adapter (default: LoRA from ``args.lora_*``; ``args.use_peft=False`` for none).
        callbacks: ``TrainerCallback``s for the student's trainer; stage metrics are logged through it too, so
            ``report_to`` receives them.

    ``train()`` runs the four stages and returns a dict with the summary and every evaluation; each stage is also
    a method (``run_teacher_loop``, ``build_curriculum``, ``train_student``, ``evaluate_all``).
    """

    def __init__(self, model, teacher, task=None, args: LinguisticRLConfig | None = None, train_dataset=None,
                 eval_dataset=None, processing_class=None, peft_config=None, callbacks=None):
        from ..tasks import MeetingRoomsTask

        if teacher is None:
            raise ValueError("LinguisticRLTrainer needs a teacher: TransformersTeacher('default'), "
                             "OpenAICompatibleTeacher(base_url=..., model=...) or any chat backend")
        if isinstance(teacher, str):
            from ..teachers import TransformersTeacher

            teacher = TransformersTeacher(teacher)
        if not callable(getattr(teacher, "generate", None)):
            raise TypeError(f"teacher must have generate(conversations, **sampling), got {type(teacher).__name__}")
        self.model = model
        self.teacher = teacher
        self.task = task if task is not None else MeetingRoomsTask()
        self.args = args if args is not None else LinguisticRLConfig(output_dir="lrl-output", report_to="none")
        self.processing_class = processing_class
        self.peft_config = peft_config
        self.callbacks = callbacks
        self.output_dir = Path(self.args.output_dir)
        self._train_problems = train_dataset
        self._test_set = eval_dataset
        self.loop_result: LoopResult | None = None
        self.curriculum = None
        self.student_trainer: LinguisticRLStudentTrainer | None = None
        self.results: dict[str, dict] = {}
        self._pending_logs: list[dict] = []

    # ------------------------------------------------------------------ data
    def generator_options(self) -> dict[str, Any]:
        params = inspect.signature(self.task.sample_tier).parameters
        opts = {}
        if "balanced" in params:
            opts["balanced"] = self.args.balanced
        if "faithful" in params:
            opts["faithful"] = self.args.faithful
        return opts

    @property
    def train_problems(self):
        if self._train_problems is None:
            self._train_problems = self.task.generate(self.args.train_problems, seed=self.args.train_seed,
                                                      **self.generator_options())
        return self._train_problems

    @property
    def test_set(self):
        if self._test_set is None:
            self._test_set = self.task.generate(self.args.test_problems, seed=self.args.test_seed,
                                                **self.generator_options())
        return self._test_set

    # ------------------------------------------------------------------ logging
    def log(self, metrics: dict[str, float]) -> None:
        """Send stage metrics to the student's trainer (and so to ``report_to``); buffered until it exists."""
        if self.student_trainer is None:
            self._pending_logs.append(dict(metrics))
            return
        for pending in self._pending_logs:
            self.student_trainer.log(pending)
        self._pending_logs.clear()
        self.student_trainer.log(dict(metrics))

    # ------------------------------------------------------------------ stages
    def run_teacher_loop(self) -> LoopResult:
        """Stage 1: the teacher solves, reflects and distils (resumable, in ``output_dir/teacher``)."""
        a = self.args
        loop = ReflectionLoop(self.teacher, self.task, self.output_dir / "teacher", batch_size=a.batch_size,
                              distill_every=a.distill_every, distill_at_end=a.distill_at_end,
                              journal_examples=a.journal_examples, journal_tail_chars=a.journal_tail_chars,
                              initial_strategy=a.initial_strategy, strategy_max_chars=a.strategy_max_chars,
                              solve_max_new_tokens=a.teacher_max_new_tokens,
                              reflect_max_new_tokens=a.reflection_max_new_tokens,
                              distill_max_new_tokens=a.distill_max_new_tokens, temperature=a.teacher_temperature,
                              seed=a.seed, resume=a.resume, restart=a.restart_teacher_loop, log=self.log,
                              progress=not a.disable_tqdm, setting_names=CLI_SETTING_NAMES)
        self.loop_result = loop.run(self.train_problems)
        logger.info("LRL stage 1: teacher train accuracy %.3f, strategy v%d", self.loop_result.accuracy,
                    self.loop_result.strategy_version)
        return self.loop_result

    def build_curriculum(self, loop_result: LoopResult | None = None):
        """Stage 2: the curriculum (saved to ``output_dir/curriculum/curriculum.jsonl``)."""
        loop_result = loop_result or self.loop_result or self.run_teacher_loop()
        a = self.args
        self.curriculum = build_curriculum(
            self.task, loop_result.results, loop_result.strategy, size=a.curriculum_size or a.train_problems,
            seed=a.curriculum_seed, balanced=a.balanced, use_teacher_rationale=a.use_teacher_rationale,
            completion=a.curriculum_completion, generator_options=self.generator_options(),
            strategy_version=loop_result.strategy_version, exclude=[r["problem"] for r in self.test_set],
            strategies=[s["text"] for s in loop_result.strategies])
        path = self.output_dir / "curriculum" / "curriculum.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        self.curriculum.to_json(str(path), lines=True)
        return self.curriculum

    def make_student_trainer(self, curriculum=None) -> LinguisticRLStudentTrainer:
        curriculum = curriculum if curriculum is not None else (self.curriculum or self.build_curriculum())
        self.student_trainer = LinguisticRLStudentTrainer(
            self.model, args=self.args, train_dataset=curriculum, processing_class=self.processing_class,
            peft_config=self.peft_config, callbacks=self.callbacks)
        return self.student_trainer

    def _student_eval(self, strategy: str) -> dict:
        st = self.student_trainer
        return evaluate(st.model, self.task, self.test_set, strategy=strategy, tokenizer=st.processing_class,
                        max_new_tokens=self.args.evaluation_max_new_tokens,
                        batch_size=self.args.evaluation_batch_size)

    def train_student(self):
        """Stage 3 (with the 'before' evaluation first when enabled)."""
        st = self.student_trainer or self.make_student_trainer()
        strategy = self.loop_result.strategy if self.loop_result else None
        if self.args.evaluate_student_before:
            self.results["student before"] = self._student_eval(strategy)
        output = st.train()
        st.save_model(str(self.output_dir / "student"))
        return output

    def evaluate_all(self) -> dict[str, dict]:
        """Stage 4: student after, teacher ± strategy, always-majority (student before comes from stage 3)."""
        a = self.args
        strategy = self.loop_result.strategy if self.loop_result else None
        if self.student_trainer is not None:
            self.results["student after"] = self._student_eval(strategy)
        if a.evaluate_teacher:
            for name, s in (("teacher, no strategy", None), ("teacher + final strategy", strategy)):
                self.results[name] = evaluate(self.teacher, self.task, self.test_set, strategy=s,
                                              max_new_tokens=a.evaluation_max_new_tokens,
                                              batch_size=a.evaluation_batch_size)
        self.results["always-majority"] = majority_baseline(self.task, self.test_set)
        for name, r in self.results.items():
            key = name.replace(" ", "_").replace(",", "").replace("+", "with")
            self.log({f"eval/{key}/accuracy": r["accuracy"], f"eval/{key}/balanced_accuracy": r["balanced_accuracy"]
                      if r["balanced_accuracy"] is not None else r["accuracy"], f"eval/{key}/unparseable": r["unparseable"]})
        return self.results

    # ------------------------------------------------------------------ all
    def train(self) -> dict[str, Any]:
        """Run the four stages; write ``report.md`` / ``report.json``; return the summary and results."""
        start = time.time()
        loop = self.run_teacher_loop()
        curriculum = self.build_curriculum(loop)
        self.make_student_trainer(curriculum)
        self.log({"teacher/train_accuracy": loop.accuracy, "teacher/final_strategy_version": loop.strategy_version})
        train_output = self.train_student()
        results = self.evaluate_all()
        a = self.args
        summary = {
            "task": self.task.name,
            "student": self.model if isinstance(self.model, str) else getattr(self.model.config, "_name_or_path", ""),
            "teacher": getattr(self.teacher, "name", type(self.teacher).__name__),
            "seeds": {"seed": a.seed, "data_seed": a.data_seed, "train_seed": a.train_seed, "test_seed": a.test_seed,
                      "curriculum_seed": a.curriculum_seed},
            "settings": {"balanced": a.balanced, "faithful": a.faithful, "completion_only_loss": a.completion_only_loss,
                         "curriculum_completion": a.curriculum_completion, "use_peft": a.use_peft,
                         "batch_size": a.batch_size, "distill_every": a.distill_every},
            "teacher_loop": {"n_problems": len(loop.results), "accuracy": loop.accuracy,
                             "batches": [{k: e[k] for k in ("batch", "accuracy", "unparseable", "flags")}
                                         for e in loop.entries],
                             "teacher_calls_this_run": loop.teacher_calls},
            "strategy": loop.strategy,
            "strategy_version": loop.strategy_version,
            "curriculum": curriculum_summary(self.task, curriculum),
            "data": {"train": label_counts(self.train_problems), "test": label_counts(self.test_set),
                     "balanced": a.balanced},
            "student_train": {"global_step": train_output.global_step, "training_loss": train_output.training_loss},
            "seconds": round(time.time() - start, 1),
        }
        json_path, md_path = write_report(self.output_dir, summary, results)
        logger.info("LRL report: %s", md_path)
        return {"summary": summary, "results": results, "report": str(md_path), "report_json": str(json_path),
                "train_output": train_output}


def label_counts(rows) -> dict[str, Any]:
    """Problems per label, overall and per difficulty (the report states the balance)."""
    from collections import Counter

    rows = list(rows)
    per: dict[str, Counter] = {}
    for r in rows:
        per.setdefault(r.get("difficulty", "all"), Counter())[r["answer"]] += 1
    return {"n": len(rows), "labels": dict(Counter(r["answer"] for r in rows)),
            "per_difficulty": {d: dict(c) for d, c in sorted(per.items())}}


def load_report(output_dir) -> dict:
    return json.loads((Path(output_dir) / "report.json").read_text())
