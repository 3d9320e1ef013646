"""Trainer callbacks: stop on a non-finite loss with a message a user can act on."""

from __future__ import annotations

import math

from transformers import TrainerCallback

from orchard.errors import OrchardError


class TrainingDiverged(OrchardError):
    """The loss (or gradient norm) became NaN/inf; the run stopped instead of training on garbage."""


class StopOnNaN(TrainerCallback):
    """Checks every logged loss and gradient norm; stops training at the first non-finite value.

    The trainer's own NaN filter is switched off (``logging_nan_inf_filter=False``) so the log shows it.
    """

    keys = ("loss", "grad_norm")

    def __init__(self) -> None:
        self.failure: str | None = None

    def on_log(self, args, state, control, logs=None, **kw):
        for k in self.keys:
            v = (logs or {}).get(k)
            if isinstance(v, (int, float)) and not math.isfinite(v) and self.failure is None:
                self.failure = (
                    f"training diverged: {k} became {v} at step {state.global_step} "
                    f"(learning_rate={args.learning_rate}). Lower the learning rate, use bf16/fp32 instead of "
                    f"fp16, or check the data for empty or extreme examples. Checkpoints before this step are "
                    f"in {args.output_dir}."
                )
                control.should_training_stop = True
                control.should_save = False
        return control

    def raise_if_failed(self) -> None:
        if self.failure:
            raise TrainingDiverged(self.failure)
