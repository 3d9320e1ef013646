"""Less host work per step: walks over every module that the libraries around the trainer repeat each step.

On an 8B PEFT model (~2,500 modules) two of them cost the step real time while the GPU waits:

- PEFT's ``disable_adapter()`` (TRL's DPO runs its reference forward inside it) first computes the whole
  model's adapter status (``get_model_status``: every module, every parameter), then walks every module twice
  more to switch the adapters off and on, toggling ``requires_grad`` on each adapter parameter;
- the Trainer's FLOP count calls ``num_parameters(exclude_embeddings=True)`` on every step, walking every module
  and parameter again for a number that does not change.

:func:`lean_adapter_switch` gives the PEFT model a ``disable_adapter`` that flips the flag of a list of its LoRA
layers made once (the same flag PEFT's layers read; no ``requires_grad`` toggling, which a no-grad reference
forward does not need); anything but plain LoRA layers keeps PEFT's own. :func:`memoize_parameter_count` caches
the count.
"""

from __future__ import annotations

import contextlib
import functools


def lean_adapter_switch(model) -> bool:
    """Install the lean ``disable_adapter`` on a PEFT model (idempotent). False where PEFT's own is kept."""
    if "disable_adapter" in model.__dict__:
        return True
    try:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils import ModulesToSaveWrapper
    except ImportError:
        return False
    if not isinstance(model, PeftModel):
        return False
    cfg = model.peft_config.get(model.active_adapter)
    if cfg is None or cfg.is_prompt_learning or getattr(cfg, "is_adaption_prompt", False):
        return False
    tuners = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, ModulesToSaveWrapper))]
    if not tuners or not all(isinstance(m, LoraLayer) for m in tuners):
        return False  # other tuner types (or modules_to_save) switch in their own ways: PEFT's path
    original = model.disable_adapter

    @contextlib.contextmanager
    def disable_adapter():
        if model.__dict__.get("_orchard_lean_off"):  # nested: PEFT's own semantics are simplest
            with original():
                yield
            return
        before = [m._disable_adapters for m in tuners]
        was = model._adapters_disabled
        model.__dict__["_orchard_lean_off"] = True
        try:
            for m in tuners:
                m._disable_adapters = True
            model._adapters_disabled = True
            yield
        finally:
            for m, b in zip(tuners, before):
                m._disable_adapters = b
            model._adapters_disabled = was
            model.__dict__.pop("_orchard_lean_off", None)

    model.__dict__["disable_adapter"] = disable_adapter
    return True


def memoize_parameter_count(model) -> bool:
    """Cache ``num_parameters`` of the transformers model under ``model`` (it is asked every step)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    fn = getattr(base, "num_parameters", None)
    if fn is None or "num_parameters" in base.__dict__:
        return False
    cached = functools.lru_cache(maxsize=8)(fn)
    base.__dict__["num_parameters"] = cached
    return True


def restore(model) -> None:
    """Undo both (benchmarks reuse one loaded model for several paths)."""
    model.__dict__.pop("disable_adapter", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base.__dict__.pop("num_parameters", None)
