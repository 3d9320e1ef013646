"""Deciding and applying the fast path: what the hardware supports, and the switches it turns on.

``decide("auto")`` turns the fast path on for CUDA GPUs of compute capability 8.0 or newer (bf16 and SDPA's flash
kernel) and off elsewhere, with the reason; ``"on"`` forces the hardware-independent part (padding-free forward),
which is what the CPU tests exercise; ``"off"`` is the plain TRL path.
"""

from __future__ import annotations

import importlib.util
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class FastPlan:
    enabled: bool
    reason: str
    unpad: bool = False  # padding-free forward with attention kept within each example
    liger: bool = False  # Liger kernels (RMSNorm, RoPE, SwiGLU; fused linear cross-entropy for SFT)
    keep_layers: int | str = 0  # decoder layers left out of activation checkpointing, or "auto"
    memory_budget_gib: float = 16.0  # what "auto" may fill
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _liger_ok() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def decide(mode: str = "auto", keep_layers: int | str = "auto", memory_budget_gib: float = 16.0) -> FastPlan:
    """The plan for this machine. ``mode``: "auto" | "on" | "off"."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"fast_path must be auto, on or off, not {mode!r}")
    if mode == "off":
        return FastPlan(False, "fast_path: off")
    gpu = torch.cuda.is_available()
    cc = torch.cuda.get_device_capability() if gpu else None
    modern = bool(cc and cc >= (8, 0))
    if mode == "auto" and not modern:
        why = "no CUDA GPU" if not gpu else f"GPU compute capability {cc[0]}.{cc[1]} < 8.0"
        return FastPlan(False, f"{why}: plain TRL path")
    plan = FastPlan(True, "fast_path: on" if mode == "on" else f"CUDA GPU, compute capability {cc[0]}.{cc[1]}",
                    unpad=True, keep_layers=keep_layers if gpu else 0, memory_budget_gib=memory_budget_gib)
    plan.liger = gpu and _liger_ok()
    if gpu and not plan.liger:
        plan.notes.append("liger-kernel not installed: install orchard[gpu] for its fused kernels")
    return plan


def trainer_kwargs(kw: dict, plan: FastPlan) -> dict:
    """Adjust TRL config keyword arguments before the trainer is built (returns a new dict)."""
    kw = dict(kw)
    if plan.enabled and plan.liger:
        kw["use_liger_kernel"] = True
    return kw


def apply(trainer, plan: FastPlan) -> dict:
    """Patch a built TRL trainer's model in place; returns what was applied (for metrics/manifests)."""
    from . import unpad
    from .checkpointing import PartialCheckpointing

    done = {"fast_path": plan.enabled, "reason": plan.reason}
    if not plan.enabled:
        return done
    if plan.unpad:
        unpad.enable(trainer.model)
        done["padding_free"] = True
    if plan.keep_layers and trainer.args.gradient_checkpointing:
        args = trainer.args
        rows = args.per_device_train_batch_size * (2 if hasattr(args, "beta") else 1)  # DPO: chosen + rejected
        cb = PartialCheckpointing(plan.keep_layers, plan.memory_budget_gib, rows * (args.max_length or 2048))
        trainer.add_callback(cb)
        done["layers_not_checkpointed"] = plan.keep_layers
    done["liger"] = bool(trainer.args.use_liger_kernel)
    return done


class FastPathCallback:
    """The same patches as :func:`apply`, made from a TrainerCallback at ``on_train_begin`` (for code that can
    pass callbacks to a stage but not touch its trainer). Liger still has to come from the trainer kwargs."""

    def __new__(cls, plan: FastPlan):
        from transformers import TrainerCallback

        from . import unpad
        from .checkpointing import PartialCheckpointing

        class _CB(TrainerCallback):
            def __init__(self):
                self.plan = plan
                self.partial = None

            def on_train_begin(self, args, state, control, model=None, **kw):
                if not plan.enabled or model is None:
                    return
                if plan.unpad:
                    unpad.enable(model)
                if plan.keep_layers and args.gradient_checkpointing:
                    rows = args.per_device_train_batch_size * (2 if hasattr(args, "beta") else 1)
                    self.partial = PartialCheckpointing(plan.keep_layers, plan.memory_budget_gib,
                                                        rows * (getattr(args, "max_length", None) or 2048))
                    self.partial.on_train_begin(args, state, control, model=model)

            def on_step_end(self, args, state, control, model=None, **kw):
                if self.partial is not None:
                    self.partial.on_step_end(args, state, control, model=model)

        return _CB()
