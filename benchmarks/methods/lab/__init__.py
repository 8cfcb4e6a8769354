"""The method lab: WMSS's claims tested at CPU scale, with enough seeds and test problems to say yes or no.

A tiny Llama trained from scratch (TRL ``SFTTrainer``) on 3-digit addition with carries (:mod:`.task`), scored
exactly and cheaply by teacher-forced argmax (:mod:`.scoring`); phase 1 to saturation with snapshots
(:mod:`.phase1`); the arms, every WMSS arm through ``weakstrong.wmss.WMSSTrainer`` (:mod:`.arms`), with the weak
models of the reviewers' controls (shuffled logits, entropy matching: :mod:`.weak`); pass@k under sampling; paired
differences with 95% CIs, the mechanism table and plots (:mod:`.report`, statistics from ``weakstrong.stats``).

    python -m benchmarks.methods.lab saturation --seed 0
    python -m benchmarks.methods.lab run --seeds 0 1 2 --arms sft_same sft_p3 wmss
    python -m benchmarks.methods.lab report

See ``benchmarks/methods/lab/README.md``.
"""
