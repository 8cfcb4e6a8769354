"""``weakstrong wmss`` and ``recipes/wmss/train.py``: WMSS from a YAML config and/or flags.

Three argument groups, parsed with TRL's ``TrlParser`` (``--config recipe.yaml`` plus ``--flag value``
overrides): :class:`WMSSScriptArguments` (the data, the SFT stage, the number of rounds), :class:`WMSSConfig` (every
``SFTConfig`` field plus the WMSS knobs; they configure each round, and the SFT stage unless ``sft_*`` says
otherwise) and TRL's ``ModelConfig`` (model, dtype, LoRA). It runs :func:`weakstrong.wmss.run_wmss`, in one process
(``weakstrong wmss``) or in many (``accelerate launch ... recipes/wmss/train.py``).

Like ``lrl`` and ``agentsim``, a rerun of the same command continues the run in ``output_dir`` (saying from which
stage and checkpoint), or says it is finished and trains nothing; a run made with other settings is refused (exit
status 2) with each difference named as a flag; ``--restart true`` moves the old run aside and starts afresh. Every
setting that the chosen path would ignore, and every unusable input (data, model, task), is refused with a message.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from ..cli import UserError
from ..recipe_cli import add_passthrough_arguments, history_callback, passthrough_argv, run_recipe

HISTORY_NAME = "wmss_log_history.json"


@dataclass
class WMSSScriptArguments:
    """Training data, the chain's shape (SFT stage, rounds) and where the final model goes."""

    dataset_path: str | None = field(
        default=None,
        metadata={"help": "A datasets.save_to_disk folder or a .json/.jsonl file in any SFT format (prompt/completion, "
                          "messages, text). When unset, `task` generates the data."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a DatasetDict folder."})
    task: str = field(default="meeting_rooms", metadata={"help": "Built-in task: meeting_rooms or arithmetic."})
    train_size: int = field(default=64, metadata={"help": "Problems generated from `task`."})
    task_seed: int = field(default=0, metadata={"help": "Seed of the generated problems."})
    rounds: int = field(default=1, metadata={"help": "WMSS rounds after SFT (the paper's main results use 1)."})
    sft_epochs: float = field(default=1.0, metadata={"help": "Epochs of the SFT stage (M0 -> M1). 0 skips it: then "
                                                             "model_name_or_path is M1 (already fine-tuned) and "
                                                             "weak_model_name_or_path is M0 (required)."})
    sft_max_steps: int = field(default=-1, metadata={"help": "If > 0, optimizer steps of the SFT stage (instead of "
                                                             "sft_epochs, which must then be > 0)."})
    sft_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the SFT stage (default: learning_rate, the rounds' rate)."})
    weak_model_name_or_path: str | None = field(
        default=None, metadata={"help": "M0, the model M1 was fine-tuned from; only with sft_epochs 0 (with the SFT "
                                        "stage, M0 is model_name_or_path)."})
    final_dir: str | None = field(default=None, metadata={"help": "Also copy the final strong model here."})
    resume: str | None = field(
        default=None, metadata={"help": "Unset or 'true': a run already in output_dir made with the same settings is "
                                        "continued (finished stages are skipped, the interrupted one resumes from its "
                                        "last checkpoint, a finished run is left as it is); one made with other "
                                        "settings is refused with the differences. 'false': refuse to touch a run "
                                        "found in output_dir."}
    )
    restart: bool = field(
        default=False, metadata={"help": "Start afresh: the run found in output_dir (its journal, summary and stage "
                                         "folders) is first moved to OUTPUT_DIR.replaced-<UTC time>."})


def build_parser():
    from trl import ModelConfig, TrlParser

    from .config import WMSSConfig

    return TrlParser((WMSSScriptArguments, WMSSConfig, ModelConfig))


DATA_HINT = ("Give --dataset_path a .json/.jsonl file or a datasets.save_to_disk folder whose rows are prompt + "
             "completion, messages, or text (--dataset_text_field), or leave it unset to generate --task problems.")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:300]


def _check_json_lines(path: str) -> None:
    """A readable message for a file that is not JSON (datasets answers with a 70-line traceback)."""
    with open(path, encoding="utf-8", errors="replace") as f:
        head = f.read(1 << 20)
    if not head.strip():
        raise UserError(f"--dataset_path {path} is empty: it holds no training example. {DATA_HINT}")
    if head.lstrip().startswith("["):
        return  # a JSON array (.json): datasets reads it; a broken one is reported below
    for n, line in enumerate(head.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as err:
            raise UserError(f"--dataset_path {path}: line {n} is not JSON ({err}); the file must hold one JSON "
                            f"object per line (JSON lines) or a JSON array. {DATA_HINT}") from None
        if not isinstance(row, dict):
            raise UserError(f"--dataset_path {path}: line {n} is a JSON {type(row).__name__}, not an object with "
                            f"named fields. {DATA_HINT}")
        return


def _check_columns(data, source: str, text_field: str) -> None:
    columns = list(data.column_names)
    if len(data) == 0:
        raise UserError(f"{source} holds no training example. {DATA_HINT}")
    if "prompt" in columns and "completion" not in columns:
        raise UserError(f"{source} has a prompt column but no completion column (columns {columns}): WMSS, like "
                        "SFT, trains on the completion (the answer). Add a completion field to every row, or use a "
                        "messages column (a whole conversation).")
    if not ({"prompt", "completion"} <= set(columns) or "messages" in columns or text_field in columns):
        raise UserError(f"{source} has columns {columns}, none of the SFT formats WMSS trains on: prompt + "
                        f"completion, messages, or {text_field!r} (--dataset_text_field). Rename the fields, or "
                        "convert the rows to one of these formats.")


def load_train_dataset(script, text_field: str = "text"):
    """The training set: a dataset on disk / JSON file, or ``train_size`` problems of a built-in task. Anything
    unusable (missing, empty, not JSON, no SFT format) is a :class:`UserError` saying what to do."""
    if script.dataset_path:
        from datasets import DatasetDict, load_dataset, load_from_disk

        path = script.dataset_path
        if os.path.isdir(path):
            try:
                data = load_from_disk(path)
            except Exception as err:  # datasets raises FileNotFoundError / ValueError variants
                raise UserError(f"--dataset_path {path} is a folder but not a datasets.save_to_disk folder "
                                f"({_first_line(err)}). {DATA_HINT}") from err
            if isinstance(data, DatasetDict):
                if script.dataset_split not in data:
                    raise UserError(f"--dataset_path {path} has the splits {sorted(data)}, not "
                                    f"{script.dataset_split!r}: pass --dataset_split with one of them.")
                data = data[script.dataset_split]
        elif not os.path.exists(path):
            raise UserError(f"--dataset_path {path}: no such file or folder. {DATA_HINT}")
        else:
            _check_json_lines(path)
            try:
                data = load_dataset("json", data_files=path, split="train")
            except Exception as err:
                cause = err.__cause__ or err.__context__ or err
                raise UserError(f"--dataset_path {path} could not be read as JSON ({_first_line(cause)}). "
                                f"{DATA_HINT}") from err
        _check_columns(data, f"--dataset_path {path}", text_field)
        return data
    from ..tasks import get_task

    return get_task(script.task).generate(script.train_size, seed=script.task_seed, format="chat")


def layout(trainer) -> dict:
    """How a WMSSTrainer held its models: ZeRO-3 partitioned or not, trainable weak parameters."""
    joint = trainer.joint_model
    weak = joint.weak_module()

    def numel(p):
        return int(getattr(p, "ds_numel", p.numel()))

    weak_params = [p for n, p in weak.named_parameters() if not joint.adapters or ".weak." in n]
    return {"distributed_type": str(trainer.accelerator.distributed_type).split(".")[-1],
            "layout": "adapters" if joint.adapters else "two_models",
            "strong_partitioned": any(hasattr(p, "ds_id") for p in joint.strong.parameters()),
            "weak_partitioned": any(hasattr(p, "ds_id") for p in weak.parameters()),
            "weak_trainable_params": sum(numel(p) for p in weak_params if p.requires_grad)}


def _defaults(cls) -> dict:
    import dataclasses

    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def check_arguments(script, config, model_args) -> bool:
    """Refuse every combination in which a setting would be ignored or contradict another (a :class:`UserError`
    naming the flags and what to do). Returns whether the SFT stage runs."""
    from trl import ModelConfig

    if script.sft_epochs < 0:
        raise UserError(f"--sft_epochs must be >= 0, got {script.sft_epochs}: the epochs of the SFT stage (M0 -> M1), "
                        "or 0 to skip it when --model_name_or_path is already fine-tuned (M1).")
    sft = script.sft_epochs > 0
    if not sft:
        ignored = [flag for flag, given in (("--sft_max_steps", script.sft_max_steps > 0),
                                            ("--sft_learning_rate", script.sft_learning_rate is not None)) if given]
        if ignored:
            raise UserError(f"--sft_epochs 0 skips the SFT stage, so {' and '.join(ignored)} would be ignored. To run "
                            f"the SFT stage (M0 -> M1), set --sft_epochs > 0 (it is then M0 = --model_name_or_path "
                            f"that is fine-tuned); to skip it, drop {' and '.join(ignored)}.")
        if not script.weak_model_name_or_path:
            raise UserError("--sft_epochs 0 skips the SFT stage: then --model_name_or_path is M1 (already fine-tuned) "
                            "and WMSS needs the model M1 was fine-tuned from as the weak model: add "
                            "--weak_model_name_or_path M0. Or set --sft_epochs > 0 to fine-tune --model_name_or_path "
                            "(M0) here first.")
        if model_args.use_peft:
            raise UserError("--sft_epochs 0 (M1 given) works with full fine-tuning only: in LoRA mode (--use_peft "
                            "true) the weak model is a second adapter on M0, so the run starts from M0 with the SFT "
                            "stage. Set --sft_epochs > 0, or --use_peft false.")
    elif script.weak_model_name_or_path:
        raise UserError(f"--weak_model_name_or_path {script.weak_model_name_or_path} is only used with --sft_epochs 0: "
                        f"with the SFT stage (--sft_epochs {script.sft_epochs:g}) the weak model of round 1 is M0 = "
                        "--model_name_or_path itself. Drop --weak_model_name_or_path, or pass --sft_epochs 0 with "
                        "--model_name_or_path = your fine-tuned M1 to use it as M0.")
    if int(script.rounds) != script.rounds or script.rounds < 1:
        raise UserError(f"--rounds must be an integer >= 1, got {script.rounds} (the paper's main results use 1).")
    defaults = _defaults(WMSSScriptArguments)
    if script.dataset_path:
        ignored = [f"--{k} {getattr(script, k)}" for k in ("task", "train_size", "task_seed")
                   if getattr(script, k) != defaults[k]]
        if ignored:
            raise UserError(f"--dataset_path {script.dataset_path} is the training data, so {', '.join(ignored)} "
                            "(settings of a built-in task's generated problems) would be ignored: drop them, or drop "
                            "--dataset_path to train on the generated problems.")
    if script.dataset_split != defaults["dataset_split"] and not (script.dataset_path
                                                                  and os.path.isdir(script.dataset_path)):
        raise UserError(f"--dataset_split {script.dataset_split} picks a split of a save_to_disk DatasetDict folder "
                        "given as --dataset_path; here there is none, so it would be ignored: drop it.")
    if str(script.resume).lower() not in ("true", "false", "none", ""):
        raise UserError(f"--resume must be 'true' or 'false', got {script.resume!r}. Unset, a run already in "
                        "--output_dir with the same settings is continued; --restart true starts afresh.")
    if str(script.resume).lower() == "false" and script.restart:
        raise UserError("--resume false and --restart true contradict each other: --restart true moves the run in "
                        "--output_dir aside and starts afresh; --resume false refuses to touch it. Keep one.")
    model_defaults = _defaults(ModelConfig)
    if model_args.model_revision != model_defaults["model_revision"]:
        raise UserError(f"--model_revision {model_args.model_revision} is not supported by weakstrong wmss (the "
                        "stages load models from folders): download that revision to a folder and pass it as "
                        "--model_name_or_path.")
    quant = [f"--{k}" for k in ("load_in_4bit", "load_in_8bit") if getattr(model_args, k)]
    if quant:
        raise UserError(f"{' '.join(quant)}: quantized training is not supported by weakstrong wmss (both models' "
                        "logits are mixed in full precision). Drop it; --use_peft true trains LoRA adapters instead.")
    if not model_args.use_peft:
        lora = [f"--{k}" for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_target_modules",
                                   "lora_target_parameters", "lora_modules_to_save", "lora_task_type", "use_rslora",
                                   "use_dora") if getattr(model_args, k) != model_defaults[k]]
        if lora:
            raise UserError(f"LoRA settings ({', '.join(lora)}) given, but --use_peft is false (full fine-tuning), "
                            "so they would be ignored: add --use_peft true, or drop them.")
    if config.resume_from_checkpoint:
        raise UserError(f"--resume_from_checkpoint {config.resume_from_checkpoint} is not used by weakstrong wmss: the "
                        "chain resumes every stage from its own last checkpoint when rerun with the same command "
                        "(see --resume). Drop it.")
    strategy = str(getattr(config.eval_strategy, "value", config.eval_strategy))
    evaluation = [flag for flag, on in ((f"--eval_strategy {strategy}", strategy != "no"),
                                        ("--do_eval", config.do_eval and strategy == "no"),  # eval_strategy sets it
                                        ("--do_predict", config.do_predict)) if on]
    if evaluation:
        raise UserError(f"{', '.join(evaluation)}: weakstrong wmss takes no evaluation set. Drop them, and evaluate "
                        "the final model with `weakstrong eval --model OUTPUT_DIR/round-<r>`.")
    return sft


def check_model(name_or_path: str, flag: str):
    """The model's config, or a :class:`UserError` naming ``flag`` and what it accepts."""
    from transformers import AutoConfig

    from ..models import resolve_model_path

    hint = ("Give 'default' (the embedded SmolLM2-135M-Instruct), a local folder holding config.json, the weights "
            "and the tokenizer, or a hub id available offline "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}).")
    path = resolve_model_path(name_or_path)
    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.path.exists(path)
    if looks_local and not os.path.isdir(os.path.expanduser(path)):
        raise UserError(f"{flag} {name_or_path}: no such folder. {hint}")
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise UserError(f"{flag} {name_or_path} is not a model this run can load ({_first_line(err)}). {hint}") from err


def setting_names(script) -> dict[str, str]:
    """How this command line names each entry of the run's identity (in the refusal of a changed run)."""
    from .config import IDENTITY_FIELDS
    from .pipeline import TRAINING_FIELDS

    names = {"model": "--model_name_or_path", "weak_model": "--weak_model_name_or_path",
             "sft": "--sft_epochs (SFT stage on/off)", "rounds": "--rounds", "lora": "--use_peft",
             "data": "the training data's fingerprint", "n_train": "the number of training examples",
             "data_source": "the training data", **{k: f"--{k}" for k in IDENTITY_FIELDS}}
    for k in TRAINING_FIELDS:
        names[f"training.{k}"] = names[f"sft_training.{k}"] = f"--{k}"
    names["training.model_init_kwargs"] = names["sft_training.model_init_kwargs"] = \
        "--dtype / --attn_implementation / --model_init_kwargs"
    names.update({"sft_training.num_train_epochs": "--sft_epochs", "sft_training.max_steps": "--sft_max_steps"})
    if script.sft_learning_rate is not None:
        names["sft_training.learning_rate"] = "--sft_learning_rate"
    names.update({"peft.r": "--lora_r", "peft.lora_alpha": "--lora_alpha", "peft.lora_dropout": "--lora_dropout",
                  "peft.target_modules": "--lora_target_modules", "peft.target_parameters": "--lora_target_parameters",
                  "peft.modules_to_save": "--lora_modules_to_save", "peft.use_rslora": "--use_rslora",
                  "peft.use_dora": "--use_dora", "peft.task_type": "--lora_task_type"})
    return names


RESTART_HINT = "--restart true (the old run is moved to OUTPUT_DIR.replaced-<UTC time>)"


def data_source(script) -> str:
    """How the training data was named, recorded in the run's identity."""
    if script.dataset_path:
        split = f" --dataset_split {script.dataset_split}" if os.path.isdir(script.dataset_path) else ""
        return f"--dataset_path {os.path.abspath(script.dataset_path)}{split}"
    return f"--task {script.task} --train_size {script.train_size} --task_seed {script.task_seed}"


def move_run_aside(root: str) -> str | None:
    """Move what a WMSS run wrote in ``root`` (journal, summary, stage folders) to ``ROOT.replaced-<UTC time>``;
    returns that folder, or None when there was nothing to move."""
    import time

    from .pipeline import JOURNAL, STAGE_DIR

    if not os.path.isdir(root):
        return None
    names = sorted(n for n in os.listdir(root) if n in (JOURNAL, HISTORY_NAME)
                   or (STAGE_DIR.fullmatch(n) and os.path.isdir(os.path.join(root, n))))
    if not names:
        return None
    aside = f"{os.path.abspath(root).rstrip(os.sep)}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    base, n = aside, 1
    while os.path.exists(aside):  # two restarts within one second
        n += 1
        aside = f"{base}-{n}"
    os.makedirs(aside)
    for name in names:
        os.rename(os.path.join(root, name), os.path.join(aside, name))
    return aside


def run(script, config, model_args) -> dict:
    """Build the chain from parsed arguments and run it (SFT, then the rounds), or continue the run already in
    ``output_dir``. Returns the run's summary, also written to ``OUTPUT_DIR/wmss_log_history.json`` by the main
    process (left as it is when the run was already finished)."""
    from transformers import AutoTokenizer
    from trl import get_peft_config

    from ..models import resolve_model_path
    from .pipeline import JOURNAL, STAGE_DIR, plan_wmss, run_wmss
    from .plots import read_entropies

    state = config.distributed_state
    is_main = config.should_save

    def say(message):
        if is_main:
            print(f"wmss: {message}", flush=True)

    sft = check_arguments(script, config, model_args)
    if not sft:
        m1 = check_model(model_args.model_name_or_path or "default", "--model_name_or_path")
        m0 = check_model(script.weak_model_name_or_path, "--weak_model_name_or_path")
        if getattr(m1, "vocab_size", None) != getattr(m0, "vocab_size", None):
            raise UserError(f"--model_name_or_path (M1) has a vocabulary of {m1.vocab_size} tokens and "
                            f"--weak_model_name_or_path (M0) one of {m0.vocab_size}: WMSS mixes the two models' "
                            "logits token by token, so both must share one tokenizer. Use as M0 the checkpoint M1 was "
                            "fine-tuned from.")
    else:
        check_model(model_args.model_name_or_path or "default", "--model_name_or_path")
    model_path = resolve_model_path(model_args.model_name_or_path or "default")
    init = dict(config.model_init_kwargs or {})
    if model_args.dtype:  # "auto" too: TRL would otherwise load a string model in float32
        init["dtype"] = model_args.dtype
    if model_args.attn_implementation:
        init["attn_implementation"] = model_args.attn_implementation
    config.model_init_kwargs = init or None
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (OSError, ValueError) as err:
        raise UserError(f"--model_name_or_path {model_args.model_name_or_path}: no tokenizer could be loaded from it "
                        f"({_first_line(err)}); save the tokenizer beside the model (tokenizer.save_pretrained).") from err
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    train_dataset = load_train_dataset(script, config.dataset_text_field)
    sft_overrides = {"num_train_epochs": script.sft_epochs, "max_steps": script.sft_max_steps}
    if script.sft_learning_rate is not None:
        sft_overrides["learning_rate"] = script.sft_learning_rate
    root = config.output_dir
    if script.restart:
        if is_main:
            aside = move_run_aside(root)
            if aside:
                say(f"--restart true: the previous run in {root} was moved to {aside}; starting afresh")
        state.wait_for_everyone()
    elif str(script.resume).lower() == "false" and os.path.isdir(root) and any(
            n == JOURNAL or STAGE_DIR.fullmatch(n) for n in os.listdir(root)):
        raise UserError(f"{root} already holds a WMSS run and --resume false refuses to touch it: rerun without "
                        f"--resume to continue it (same settings), pass {RESTART_HINT} to start afresh, or choose "
                        "another --output_dir.")
    weak = resolve_model_path(script.weak_model_name_or_path) if not sft else None
    peft_config = get_peft_config(model_args)
    chain = dict(rounds=script.rounds, sft=sft, sft_args=sft_overrides, weak_model=weak, peft_config=peft_config,
                 identity_extra={"data_source": data_source(script)}, setting_names=setting_names(script),
                 restart_hint=RESTART_HINT)
    plan = plan_wmss(model_path, train_dataset, config, resume=True, **chain)
    if plan.status == "finished":
        say(f"{plan.describe()}. Nothing to train: the same command again changes nothing. To train again, pass "
            f"{RESTART_HINT}, or choose another --output_dir.")
        return _finished_summary(script, config, plan)
    if plan.status == "resume":
        say(plan.describe())
    history: list[dict] = []
    last = {}
    result = run_wmss(model_path, train_dataset, config, processing_class=tokenizer,
                      callbacks=[history_callback(history)], resume=True,
                      on_stage_end=lambda name, path, tr: last.update(layout(tr)) if name.startswith("round") else None,
                      **chain)
    final = result.final_dir
    if script.final_dir:
        _copy_final(final, script.final_dir, is_main)
        final = script.final_dir
    summary = {"final": final, "num_processes": state.num_processes, "log_history": history,
               "stages": result.stages, "resumed_from": None if plan.status == "new" else plan.describe(),
               "selections": {str(r): s["indices"] for r, s in result.selections.items()}, **last}
    if is_main:
        for r in result.selections:
            folder = os.path.join(result.stages[f"round-{r}"], "selection")
            if not os.path.isfile(os.path.join(folder, "entropies.jsonl")):
                continue
            ent = read_entropies(folder)
            summary.setdefault("h_strong", {})[str(r)] = ent["H_strong"]
            summary.setdefault("h_weak", {})[str(r)] = ent["H_weak"]
        with open(os.path.join(root, HISTORY_NAME), "w") as f:
            json.dump(summary, f, indent=1)
        say(f"final model: {final}")
    state.wait_for_everyone()
    return summary


def _copy_final(final: str, target: str, is_main: bool) -> None:
    import shutil

    from accelerate import PartialState

    PartialState().wait_for_everyone()  # every process has finished writing the final model (ZeRO-3 gathers it)
    if is_main:
        if not any(os.path.isfile(os.path.join(final, n)) for n in os.listdir(final)):
            raise RuntimeError(f"the final model folder {final} has no files to copy to --final_dir {target}")
        os.makedirs(target, exist_ok=True)
        for name in os.listdir(final):
            if os.path.isfile(os.path.join(final, name)):
                shutil.copy2(os.path.join(final, name), target)


def _finished_summary(script, config, plan) -> dict:
    """The summary of a run that was already finished (its file is left as it is); ``final_dir`` is (re)filled."""
    path = os.path.join(config.output_dir, HISTORY_NAME)
    summary = {"final": plan.final_dir, "stages": {st: os.path.join(config.output_dir, st) for st in plan.stages}}
    if os.path.isfile(path):
        with open(path) as f:
            summary = json.load(f)
    if script.final_dir:
        _copy_final(plan.final_dir, script.final_dir, config.should_save)
    config.distributed_state.wait_for_everyone()
    return summary


def main_from_argv(argv=None) -> int:
    """Entry point of ``recipes/wmss/train.py`` (any number of processes)."""
    return run_recipe(build_parser, run, argv)


# ------------------------------------------------------------------ `weakstrong wmss`
def add_arguments(parser) -> None:
    add_passthrough_arguments(
        parser, "recipes/wmss/config.yaml",
        "Any setting below can be given as --name value (e.g. --mix_lambda 0.42 --use_peft true --rounds 2) or in the "
        "--config YAML. Rerunning the same command continues the run in --output_dir (or says it is finished); "
        "--restart true starts afresh. The example recipe ships with the package: `weakstrong recipe show wmss` "
        "prints it. For several processes: accelerate launch --config_file ddp.yaml recipes/wmss/train.py --config "
        "config.yaml (`weakstrong recipe show accelerate/ddp`).", build_parser)


def main(args) -> int:
    return main_from_argv(passthrough_argv(args, "wmss-output"))
