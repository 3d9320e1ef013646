"""Trainer callbacks: stop on a non-finite loss with a message a user can act on; a progress bar without chatter."""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback

from orchard.errors import OrchardError

log = logging.getLogger(__name__)


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


class QuietProgress(ProgressCallback):
    """The trainer's progress bars, without the dict of metrics it prints on stdout at every logging step (stdout is
    where the command's JSON result goes). The bar shows the latest losses; every logged value is still in
    log_history.json and TensorBoard, and in the debug log (`orchard --verbose`)."""

    def on_train_begin(self, args, state, control, **kwargs):
        super().on_train_begin(args, state, control, **kwargs)
        self.shown = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        log.debug("step %d: %s", state.global_step,
                  ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()))
        new = {k: f"{logs[k]:.4g}" for k in ("loss", "eval_loss") if isinstance(logs.get(k), (int, float))}
        if self.training_bar is not None and new:
            self.shown.update(new)
            self.training_bar.set_postfix(self.shown, refresh=False)


def quiet_progress(trainer) -> None:
    """Put QuietProgress in place of the progress callback that the trainer adds for itself."""
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgress())
