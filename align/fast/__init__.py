"""orchard's GPU training fast path for QLoRA SFT and DPO (TRL trainers), with automatic fallback.

The stages use four functions: ``plan = decide(config.fast)``; ``kw = trainer_kwargs(kw, plan, model=...)`` before
building the TRL config; ``applied = apply(trainer, plan)`` once the trainer exists; ``finish(trainer, applied)``
after training. Same math as the plain path (tests/test_fast_path.py checks loss and gradients); measured in
benchmarks/train_speed.py, results in benchmarks/README.md. README.md in this folder lists the modules, the
config switches and the version check.
"""

from .plan import FastPlan, apply, decide, finish, trainer_kwargs

__all__ = ["FastPlan", "apply", "decide", "finish", "trainer_kwargs"]
