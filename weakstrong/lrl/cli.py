"""``weakstrong lrl`` and ``recipes/lrl/run.py``: the whole pipeline from a YAML config and/or flags.

Three argument groups, parsed with TRL's ``TrlParser`` (``--config recipe.yaml`` plus ``--flag value``
overrides): :class:`LRLScriptArguments` (task, teacher), :class:`LinguisticRLConfig` (loop, curriculum, student
SFT, evaluation) and :class:`LRLModelArguments` (the student model). LoRA settings live in the config
(``use_peft``, ``lora_r`` …, on by default) rather than in TRL's ``ModelConfig``, whose defaults differ.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..recipe_cli import add_passthrough_arguments, parse_recipe, passthrough_argv


@dataclass
class LRLScriptArguments:
    """Task and teacher of a Linguistic RL run."""

    task: str = field(default="meeting_rooms", metadata={"help": "Built-in task: meeting_rooms or arithmetic."})
    teacher: str = field(
        default="default",
        metadata={"help": "The teacher: 'default' (embedded SmolLM2-135M-Instruct), a local path or hub id, or an "
                          "OpenAI-compatible endpoint as URL::MODEL (e.g. http://localhost:8000/v1::Qwen/Qwen2.5-7B-"
                          "Instruct; replicas of one model: URL1,URL2::MODEL)."},
    )
    teacher_model_alias: str | None = field(
        default=None, metadata={"help": "Short name of an endpoint's model in reports and the run's identity "
                                        "(default: MODEL of --teacher)."})
    teacher_api_key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "Environment variable holding the endpoint's API key."}
    )
    teacher_concurrency: int = field(default=4, metadata={"help": "Endpoint requests in flight at once (in total "
                                                                  "over the replicas)."})
    teacher_max_retries: int = field(default=6, metadata={"help": "Retries per endpoint request."})
    teacher_connect_timeout: float = field(default=10.0, metadata={"help": "Seconds to connect to the endpoint."})
    teacher_read_timeout: float = field(default=120.0, metadata={"help": "Seconds to wait for one reply."})
    teacher_deadline: float = field(default=600.0, metadata={"help": "Total seconds per request, retries included."})
    teacher_first_reply_deadline: float = field(
        default=180.0, metadata={"help": "Total seconds per request while the endpoint has not answered once yet (a "
                                         "wrong port or a hung server fails after this, not after --teacher_deadline)."})
    teacher_cache_dir: str | None = field(
        default="auto", metadata={"help": "Reply cache folder ('auto': $WEAKSTRONG_CACHE/chat-cache; None: off)."}
    )
    teacher_batch_size: int = field(default=8, metadata={"help": "Conversations per generate() of a local teacher."})
    teacher_base_url: str | None = field(default=None, metadata={"help": "Replaced by --teacher URL::MODEL."})
    teacher_model: str | None = field(default=None, metadata={"help": "Replaced by --teacher URL::MODEL."})


#: how the LRL command line names each endpoint setting (used in the client's error messages)
TEACHER_SETTINGS = {"base_url": "--teacher URL::MODEL", "model": "--teacher URL::", "api_key_env": "--teacher_api_key_env ",
                    "connect_timeout": "--teacher_connect_timeout", "read_timeout": "--teacher_read_timeout",
                    "deadline": "--teacher_deadline", "max_retries": "--teacher_max_retries",
                    "first_reply_deadline": "--teacher_first_reply_deadline"}


#: what an unreachable teacher's error ends with
LOOP_RESUME_HINT = ("The teacher loop's completed batches are kept (and replies cached): rerun the same command and it "
                    "resumes after its last completed batch.")


@dataclass
class LRLModelArguments:
    """The student model."""

    model_name_or_path: str = field(
        default="default", metadata={"help": "Student: 'default' (embedded SmolLM2-135M-Instruct), a path or a hub id."}
    )
    dtype: str | None = field(default=None, metadata={"help": "float32, bfloat16 or float16 (default: the model's)."})


def make_teacher(script):
    """The teacher named by ``script.teacher``: an endpoint (``URL::MODEL``) or a local model."""
    from ..backends import parse_endpoint
    from ..cli import UserError
    from ..teachers import OpenAICompatibleTeacher, TransformersTeacher

    if script.teacher_base_url or script.teacher_model:
        raise UserError(f"teacher_base_url / teacher_model were replaced by one setting: --teacher URL::MODEL "
                        f"(here: --teacher {script.teacher_base_url or 'URL'}::{script.teacher_model or 'MODEL'})")
    endpoint = parse_endpoint(script.teacher)
    if endpoint is not None:
        urls, model = endpoint
        cache = None if script.teacher_cache_dir in (None, "None", "none", "") else script.teacher_cache_dir
        return OpenAICompatibleTeacher(base_url=urls, model=model, model_alias=script.teacher_model_alias,
                                       api_key_env=script.teacher_api_key_env, concurrency=script.teacher_concurrency,
                                       max_retries=script.teacher_max_retries,
                                       connect_timeout=script.teacher_connect_timeout,
                                       read_timeout=script.teacher_read_timeout, deadline=script.teacher_deadline,
                                       first_reply_deadline=script.teacher_first_reply_deadline,
                                       cache_dir=cache, run_label="the LRL teacher (weakstrong lrl)",
                                       setting_names=TEACHER_SETTINGS, resume_hint=LOOP_RESUME_HINT)
    if "://" in script.teacher:
        raise UserError(f"--teacher {script.teacher!r} looks like a URL but names no model: use URL::MODEL, e.g. "
                        "http://localhost:8000/v1::Qwen/Qwen2.5-7B-Instruct")
    return TransformersTeacher(script.teacher, batch_size=script.teacher_batch_size)


def build_parser():
    from trl import TrlParser

    from .config import LinguisticRLConfig

    return TrlParser((LRLScriptArguments, LinguisticRLConfig, LRLModelArguments))


def run(script, config, model_args, console=None) -> dict:
    """Build the teacher, task and trainer from parsed arguments and run the four stages."""
    from ..tasks import get_task
    from .trainer import LinguisticRLTrainer

    if model_args.dtype:
        config.model_init_kwargs = {**(config.model_init_kwargs or {}), "dtype": model_args.dtype}
    teacher = make_teacher(script)
    trainer = LinguisticRLTrainer(model_args.model_name_or_path, teacher=teacher, task=get_task(script.task),
                                  args=config)
    out = trainer.train()
    if console is not None:
        from ..reporting import score_table

        console.print(score_table(out["results"], title=f"Linguistic RL — {script.task}"))
        console.print(f"report: {out['report']}")
    return out


def main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/lrl/run.py``."""
    from rich.console import Console

    script, config, model_args = parse_recipe(build_parser(), argv)
    run(script, config, model_args, Console())
    return 0


# ------------------------------------------------------------------ `weakstrong lrl`
def add_arguments(parser) -> None:
    add_passthrough_arguments(
        parser, "recipes/lrl/config.yaml",
        "Any setting below can be given as --name value (e.g. --teacher http://localhost:8000/v1::Qwen/Qwen2.5-7B-"
        "Instruct --train_problems 100) or in the --config YAML. The example recipe ships with the package: "
        "`weakstrong recipe show lrl` prints it.", build_parser)


def main(args) -> int:
    return main_from_argv(passthrough_argv(args, "lrl-output"))
