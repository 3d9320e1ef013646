"""orchard's GPU training fast path for QLoRA SFT and DPO (TRL trainers), with automatic fallback.

Usage inside a stage: ``plan = decide(config.fast_path)``; ``kw = trainer_kwargs(kw, plan)`` before building the
TRL config; ``apply(trainer, plan)`` once the trainer exists; ``finish(trainer, applied)`` after training. Same math as the plain path (tests/test_fast_path.py
checks loss and gradients); measured in benchmarks/train_speed.py, results in benchmarks/README.md.

Modules: ``unpad`` (padding-free forward), ``attention`` (varlen flash), ``layer`` (hand-fused decoder layers),
``lora`` (fused LoRA for layers ``layer`` does not cover), ``prefix`` (DPO's shared prompts), ``checkpointing``
(kept layers per batch), ``host`` (per-step module walks of PEFT and the Trainer made cheap), ``plan`` (deciding
and applying).
"""

from .plan import FastPlan, apply, decide, finish, trainer_kwargs

__all__ = ["FastPlan", "apply", "decide", "finish", "trainer_kwargs"]
