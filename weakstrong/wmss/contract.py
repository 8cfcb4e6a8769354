"""The contract of ``WMSSTrainer`` against TRL's ``SFTTrainer``: every ``SFTConfig`` / ``TrainingArguments`` field
and every ``SFTTrainer`` constructor argument, with what it does in a WMSS run.

Each entry is ``(kind, note, verified_by)``:

* ``"same"`` — works exactly as in SFT (the strong model is SFT's model; applied to the trained module, i.e. to both
  models where the option acts on modules);
* ``"wmss"`` — means something specific in WMSS (``note`` says what);
* ``"refused"`` — refused at construction with an error that names the field and what to do instead.

``verified_by``: the test (ours, or ``peer:<test>`` for TRL's own ``tests/test_sft_trainer.py`` run against
``WMSSTrainer``) that checks the row, or ``""`` where nothing does yet. ``docs/wmss_contract.md`` is generated from
this table (:func:`contract_markdown`); ``tests/wmss/test_contract.py`` fails when a field of the installed
``SFTConfig`` or a parameter of ``SFTTrainer.__init__`` is missing here, so TRL upgrades are caught.
"""

from __future__ import annotations

SAME, WMSS, REFUSED = "same", "wmss", "refused"

_T = "tests/wmss/"
_P = _T + "test_sft_parity.py::"

#: SFTConfig / TrainingArguments fields
CONFIG: dict[str, tuple[str, str, str]] = {
    # ---- where the run writes, how long it runs
    "output_dir": (WMSS, "Also holds `selection/` (per-example entropies, weights, the drawn set, the entropy plot); "
                   "checkpoints `checkpoint-N` hold the weak branch in `weak/` and the drawn set in `wmss_state.json`.",
                   _T + "test_trainer.py::test_one_train_is_one_run"),
    "num_train_epochs": (WMSS, "Epochs of phase 3 over the *selected* set; the paper's de-duplicated draw keeps fewer "
                         "examples than the dataset (`dedup=False` keeps |D| rows), so an epoch has fewer steps than "
                         "SFT's.", _T + "test_trainer.py::test_one_train_is_one_run"),
    "max_steps": (SAME, "Optimizer steps of phase 3.", _T + "test_trainer.py::test_one_train_is_one_run"),
    "do_train": (SAME, "", ""), "do_eval": (SAME, "", ""), "do_predict": (SAME, "", ""),
    "resume_from_checkpoint": (SAME, "Not read by the Trainer (scripts' convention), as in SFT.", ""),
    # ---- optimisation
    "per_device_train_batch_size": (SAME, "", _T + "test_trainer.py::test_one_train_is_one_run"),
    "per_device_eval_batch_size": (SAME, "", _T + "test_trainer.py::test_evaluation_is_on_the_strong_model"),
    "gradient_accumulation_steps": (SAME, "The mixed loss is normalised by `num_items_in_batch` like SFT's.",
                                    _T + "test_joint.py"),
    "average_tokens_across_devices": (SAME, "", "tests/distributed/test_multiprocess.py"),
    "learning_rate": (WMSS, "One optimizer over the trainable parameters of both models (weak too unless "
                      "`freeze_weak`).", ""),
    "lr_scheduler_type": (SAME, "", ""), "lr_scheduler_kwargs": (SAME, "", ""), "warmup_steps": (SAME, "", ""),
    "optim": (WMSS, "One optimizer over both models' trainable parameters.", ""),
    "optim_args": (SAME, "", ""), "weight_decay": (SAME, "", ""), "adam_beta1": (SAME, "", ""),
    "adam_beta2": (SAME, "", ""), "adam_epsilon": (SAME, "", ""),
    "optim_target_modules": (WMSS, "Module names are matched inside the trained module, whose parameters are named "
                             "`strong.*` / `weak.*`.", ""),
    "max_grad_norm": (WMSS, "Clips the joint gradient norm of both models (one optimizer).", ""),
    "seed": (WMSS, "As in SFT, and the seed of the weighted draw unless `selection_seed` is set.",
             _T + "test_trainer.py::test_resume_is_the_uninterrupted_run"),
    "data_seed": (SAME, "", ""), "full_determinism": (SAME, "", ""),
    # ---- the objective
    "loss_type": (WMSS, "`nll`: CE of the mixed logits; `dft`: `sg(p_mix(y))·CE_mix` — DFT on the mixture "
                  "(`weakstrong.wmss.joint.mixed_loss`). `eval_loss` uses the strong model's own loss of that type.",
                  _P + "test_mixed_loss_matches_full_logits"),
    "label_smoothing_factor": (WMSS, "transformers' label smoothing on the mixed logits, exact without full logits "
                               "(`mixed_loss`); with `loss_type='dft'` refused (SFT drops it silently there).",
                               _P + "test_label_smoothing_with_dft_is_refused"),
    "router_aux_loss_coef": (WMSS, "MoE: the strong model's router balancing loss is added × this coefficient and "
                             "logged as `aux_loss`, as in SFT. The weak model's router loss is not computed: its "
                             "routers learn only through the mixed CE.",
                             _P + "test_moe_router_loss_is_added_and_logged_as_sft"),
    "neftune_noise_alpha": (WMSS, "Noise on the input embeddings of both branches during training (the strong "
                            "model's through Transformers' hook, a separate weak model's alike).",
                            _P + "test_neftune_noise_on_both_branches"),
    # ---- precision, memory, kernels
    "bf16": (WMSS, "Left unset (`None`): bf16 only where the accelerator supports it (TRL turns it on, and then a "
             "CPU refuses). Set explicitly: as in SFT.", _T + "test_errors.py::test_config_defaults"),
    "fp16": (SAME, "", ""), "bf16_full_eval": (SAME, "", ""), "fp16_full_eval": (SAME, "", ""),
    "tf32": (SAME, "", ""),
    "activation_checkpointing": (WMSS, "Both models; in LoRA mode every checkpointed layer recomputes with the "
                                 "adapter of its forward.", _T + "test_lora.py"),
    "activation_checkpointing_kwargs": (SAME, "", "peer:test_train_with_gradient_checkpointing_reentrant"),
    "gradient_checkpointing": (WMSS, "Deprecated mirror of `activation_checkpointing` (same meaning).",
                               _T + "test_lora.py"),
    "gradient_checkpointing_kwargs": (SAME, "", "peer:test_train_with_gradient_checkpointing_reentrant"),
    "activation_offloading": (REFUSED, "Not verified with the two forwards of the joint model: set False, use "
                              "`activation_checkpointing`.", _T + "test_contract.py::test_refused_fields_are_refused"),
    "torch_compile": (SAME, "Compiles the trained module (both models).", ""),
    "torch_compile_backend": (SAME, "", ""), "torch_compile_mode": (SAME, "", ""),
    "use_liger_kernel": (WMSS, "Liger's layer kernels on both models (TRL keeps its fused linear CE off, which the "
                         "hidden-state loss needs).", _P + "test_liger_is_applied_to_both_models"),
    "liger_kernel_config": (SAME, "Applied to both models.", _P + "test_liger_is_applied_to_both_models"),
    "use_cache": (SAME, "Training forwards run with `use_cache=False`, as SFT's.", ""),
    "torch_empty_cache_steps": (SAME, "", ""), "auto_find_batch_size": (SAME, "", ""),
    # ---- logging
    "logging_strategy": (SAME, "", ""), "logging_steps": (SAME, "", ""), "logging_first_step": (SAME, "", ""),
    "log_on_each_node": (SAME, "", ""), "logging_nan_inf_filter": (SAME, "", ""),
    "include_num_input_tokens_seen": (SAME, "", ""), "log_level": (SAME, "", ""),
    "log_level_replica": (SAME, "", ""), "disable_tqdm": (SAME, "", ""), "report_to": (SAME, "", ""),
    "run_name": (SAME, "", ""), "project": (SAME, "", ""), "trackio_space_id": (SAME, "", ""),
    "trackio_bucket_id": (SAME, "", ""), "trackio_static_space_id": (SAME, "", ""),
    # ---- evaluation
    "eval_strategy": (WMSS, "Evaluation runs on the strong model: `eval_loss` is its own loss (as SFT's), "
                      "`eval_mean_token_accuracy` / `eval_entropy` its metrics; `eval_mixed_ce`, `eval_weak_ce` apart.",
                      _T + "test_trainer.py::test_evaluation_is_on_the_strong_model"),
    "eval_steps": (SAME, "", ""), "eval_delay": (SAME, "", ""),
    "prediction_loss_only": (WMSS, "False: `compute_metrics` gets the strong model's logits.",
                             _T + "test_trainer.py::test_evaluation_is_on_the_strong_model"),
    "eval_on_start": (SAME, "", ""), "eval_do_concat_batches": (SAME, "", ""),
    "eval_use_gather_object": (SAME, "", ""), "eval_accumulation_steps": (SAME, "", ""),
    "include_for_metrics": (SAME, "", ""), "batch_eval_metrics": (SAME, "", ""),
    "metric_for_best_model": (SAME, "Any logged metric, `mean_token_accuracy` included.",
                              _P + "test_mean_token_accuracy_train_and_eval"),
    "greater_is_better": (SAME, "", ""),
    "load_best_model_at_end": (WMSS, "Restores both models from the best checkpoint.",
                               _T + "test_trainer.py::test_load_best_model_at_end_and_strong_only_save"),
    # ---- saving, hub
    "save_strategy": (SAME, "", _T + "test_trainer.py::test_resume_is_the_uninterrupted_run"),
    "save_steps": (SAME, "", ""), "save_total_limit": (SAME, "", ""), "save_on_each_node": (SAME, "", ""),
    "save_only_model": (SAME, "Checkpoints without optimizer state (both models' weights kept).", ""),
    "enable_jit_checkpoint": (SAME, "", ""),
    "push_to_hub": (WMSS, "Pushes the strong model only (`save_model`), as an ordinary model folder.", ""),
    "hub_token": (SAME, "", _T + "test_errors.py::test_sft_config_converts_with_its_tokens"),
    "hub_private_repo": (SAME, "", ""), "hub_model_id": (SAME, "", ""), "hub_strategy": (SAME, "", ""),
    "hub_always_push": (SAME, "", ""), "hub_revision": (SAME, "", ""),
    "ignore_data_skip": (SAME, "", ""),
    "restore_callback_states_from_checkpoint": (SAME, "", ""),
    # ---- devices, distribution, data loading
    "use_cpu": (SAME, "", ""), "accelerator_config": (SAME, "", ""),
    "parallelism_config": (REFUSED, "Tensor / context / sequence parallelism: the loss needs whole sequences of both "
                           "models on each process. Use DDP or DeepSpeed ZeRO-2/3.",
                           _T + "test_contract.py::test_parallelism_config_is_refused"),
    "dataloader_drop_last": (SAME, "", ""), "dataloader_num_workers": (SAME, "", ""),
    "dataloader_pin_memory": (SAME, "", ""), "dataloader_persistent_workers": (SAME, "", ""),
    "dataloader_prefetch_factor": (SAME, "", ""), "dataloader_multiprocessing_context": (SAME, "", ""),
    "dataloader_in_order": (SAME, "", ""),
    "remove_unused_columns": (SAME, "", ""), "label_names": (SAME, "", ""),
    "train_sampling_strategy": (SAME, "Over the selected set.", ""), "length_column_name": (SAME, "", ""),
    "ddp_find_unused_parameters": (SAME, "", ""), "ddp_bucket_cap_mb": (SAME, "", ""),
    "ddp_broadcast_buffers": (SAME, "", ""), "ddp_static_graph": (SAME, "", ""), "ddp_backend": (SAME, "", ""),
    "ddp_timeout": (SAME, "", ""),
    "fsdp": (WMSS, "Wraps the trained module (both models); not yet run on a GPU (Accelerate applies FSDP only "
             "there).", ""),
    "fsdp_config": (WMSS, "As `fsdp`; not yet run on a GPU.", ""),
    "deepspeed": (WMSS, "ZeRO-1/2/3 over both models; phase 2 gathers ZeRO-3 parameters for its forwards.",
                  "tests/distributed/test_multiprocess.py"),
    "debug": (SAME, "", ""), "skip_memory_metrics": (SAME, "", ""), "local_rank": (SAME, "", ""),
    # ---- SFT's data preparation
    "model_init_kwargs": (WMSS, "Loads a string `model`, as SFT; also a string `weak_model` unless "
                          "`weak_model_init_kwargs` is set.", _T + "test_errors.py"),
    "trust_remote_code": (SAME, "Both models.", ""),
    "chat_template_path": (SAME, "", ""), "dataset_text_field": (SAME, "", _T + "test_data.py"),
    "dataset_kwargs": (SAME, "", "peer:test_skip_prepare_dataset_with_masks_but_no_labels_raises"), "dataset_num_proc": (SAME, "", ""), "eos_token": (SAME, "", ""),
    "pad_token": (SAME, "", _T + "test_errors.py::test_sft_config_converts_with_its_tokens"),
    "max_length": (SAME, "Examples left with no supervised token are dropped, as SFT drops them.",
                   _T + "test_errors.py"),
    "truncation_mode": (SAME, "", ""),
    "shuffle_dataset": (SAME, "", _T + "test_data.py"),
    "packing": (REFUSED, "WMSS measures one entropy per example: set `packing=False` (`padding_free=True` works).",
                _T + "test_errors.py::test_config_errors"),
    "packing_strategy": (WMSS, "Unused, since `packing` is refused.", ""),
    "padding_free": (SAME, "Refused with prompt-learning adapters (they need the attention mask).",
                     _T + "test_data.py"),
    "pad_to_multiple_of": (SAME, "", ""),
    "eval_packing": (REFUSED, "Evaluation reports per-example statistics on unpacked rows: set `eval_packing=False` "
                     "or leave it unset.", _T + "test_contract.py::test_refused_fields_are_refused"),
    "completion_only_loss": (WMSS, "The loss and the phase-2 entropies use exactly the tokens SFT trains.",
                             _T + "test_data.py"),
    "assistant_only_loss": (WMSS, "As `completion_only_loss`: the assistant turns, for the loss and the entropies.",
                            _T + "test_data.py"),
}

#: SFTTrainer constructor arguments (``self`` excluded) and WMSSTrainer's own
TRAINER: dict[str, tuple[str, str, str]] = {
    "model": (WMSS, "The strong model M1 (path, model or PeftModel), SFT's `model`; `trainer.model` stays this model "
              "(or its PeftModel). A LoRA PeftModel without `weak_model` is LoRA mode (weak = a second adapter). "
              "Logit-transforming families and biased heads: see Model families.",
              _P + "test_trainer_model_is_the_users_model"),
    "args": (SAME, "A `WMSSConfig`; an `SFTConfig` / `TrainingArguments` is converted (tokens kept).",
             _P + "test_positional_order_as_sft"),
    "data_collator": (SAME, "Also batches the phase-2 entropy forwards.", ""),
    "train_dataset": (WMSS, "A `datasets.Dataset` (an `IterableDataset` is refused: WMSS re-samples it by index); "
                      "missing: SFT's error, \"`train_dataset` is required\".",
                      _P + "test_missing_train_dataset_error_is_sfts"),
    "eval_dataset": (SAME, "Evaluated on the strong model.", _T + "test_trainer.py::test_evaluation_is_on_the_strong_model"),
    "processing_class": (SAME, "", ""),
    "compute_loss_func": (REFUSED, "The loss is the mixed CE (`mixed_loss`): choose `loss_type` / "
                          "`label_smoothing_factor`, or subclass and override `compute_loss`.",
                          _P + "test_compute_loss_func_is_refused"),
    "compute_metrics": (SAME, "Gets the strong model's logits.",
                        _T + "test_trainer.py::test_evaluation_is_on_the_strong_model"),
    "callbacks": (SAME, "Callbacks get the user's (strong) model as `model`.", ""),
    "optimizers": (WMSS, "An optimizer you build must hold the weak model's parameters too (`trainer.joint_model`) "
                   "for the weak model to train.", ""),
    "optimizer_cls_and_kwargs": (WMSS, "Built over both models' trainable parameters.", ""),
    "preprocess_logits_for_metrics": (SAME, "On the strong model's logits.", ""),
    "quantization_config": (SAME, "Applied when loading a string `model` (the weak one: "
                            "`weak_model_init_kwargs`); not yet run (needs bitsandbytes on a GPU).", ""),
    "peft_config": (WMSS, "Wraps the strong model; needs a `weak_model` (the base under a new adapter would be the "
                    "strong model itself). Every PEFT type trains in the two-models layout (prompt learning through "
                    "the PeftModel's forward); LoRA mode takes `LoraConfig` only.",
                    _P + "test_prompt_learning_adapters_are_trained"),
    "formatting_func": (SAME, "", _T + "test_data.py"),
    "weak_model": (WMSS, "WMSS only, keyword-only: M0, the earlier checkpoint (path, model, or a saved adapter in "
                   "LoRA mode).", _P + "test_signature_is_sfts_with_weak_model_keyword"),
}

#: a value of each refused config field that WMSSConfig refuses (checked by tests/wmss/test_contract.py)
REFUSED_VALUES = {"activation_offloading": True, "eval_packing": True, "packing": True}


#: TRL's own ``tests/test_sft_trainer.py`` run against WMSSTrainer: the tests that pass for SFTTrainer and fail for
#: WMSSTrainer by design, with the contract row that says why
PEER_DIFFERENCES = {
    "test_train_packing[bfd]": "packing", "test_train_packing[wrapped]": "packing",
    "test_packing_carries_labels": "packing", "test_eval_packing": "packing", "test_only_train_packing": "packing",
    "test_train_with_iterable_dataset": "train_dataset", "test_train_assistant_only_iterable_dataset": "train_dataset",
    "test_train[tiny-Cohere2ForCausalLM]": "model",
}

#: model families whose logits are transformed or whose LM head has a bias
FAMILIES = ("Gemma-2/3 (`final_logit_softcapping`), Cohere / Cohere2 (`logit_scale`), Granite (`1/logits_scaling`), "
            "Falcon-H1 (`lm_head_multiplier`) and LM heads with a bias train on the exact mixed CE of their own logits: "
            "the trainer passes the transform and the biases to the hidden-state kernels (`logit_scale`, "
            "`final_logit_softcapping`, `bias` / `strong_bias` / `weak_bias`). While the installed kernels do not take "
            "an argument a model needs, `WMSSTrainer` refuses the model at construction, naming the argument (a "
            "biased head already trains at `mix_lambda=1.0`).")


def contract_markdown() -> str:
    """The contract as Markdown tables (``docs/wmss_contract.md``)."""
    lines = ["# WMSSTrainer against SFTTrainer: the contract", "",
             "Generated from `weakstrong/wmss/contract.py` (`python -m weakstrong.wmss.contract > "
             "docs/wmss_contract.md`). *same*: works exactly as in SFT; *wmss*: means something specific in WMSS; "
             "*refused*: refused at construction with an error naming the field and what to do. *verified by*: the "
             "test that checks the row (empty: none yet).", ""]
    for title, table in (("`SFTConfig` / `TrainingArguments` fields", CONFIG),
                         ("`SFTTrainer` constructor arguments", TRAINER)):
        lines += [f"## {title}", "", "| name | kind | in WMSS | verified by |", "|---|---|---|---|"]
        for name, (kind, note, test) in table.items():
            lines.append(f"| `{name}` | {kind} | {note.replace('|', '/')} | {f'`{test}`' if test else ''} |")
        lines.append("")
    lines += ["## Model families", "", FAMILIES, "",
              "## TRL's own SFT tests", "",
              "TRL's `tests/test_sft_trainer.py`, run against `WMSSTrainer` (the weak model: the same architecture, "
              "another seed), fails by design only where a row above says so:", "",
              "| TRL test | row |", "|---|---|"]
    lines += [f"| `{test}` | `{row}` |" for test, row in PEER_DIFFERENCES.items()]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(contract_markdown(), end="")
