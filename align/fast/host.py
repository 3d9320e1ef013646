"""Less host work per step: walks over every module that the libraries around the trainer repeat each step.

On an 8B PEFT model (~2,500 modules) two of them cost the step real time while the GPU waits:

- PEFT's ``disable_adapter()`` (TRL's DPO runs its reference forward inside it) first computes the whole
  model's adapter status (``get_model_status``: every module, every parameter), then walks every module twice
  more to switch the adapters off and on, toggling ``requires_grad`` on each adapter parameter;
- the Trainer's FLOP count calls ``num_parameters(exclude_embeddings=True)`` on every step, walking every module
  and parameter again for a number that does not change;
- every step the Trainer calls ``model.train()`` (a recursive walk setting a flag already set), ``zero_grad()``
  (another walk) and clips the gradient norm over ``model.parameters()`` (a walk, then a filter of every
  parameter for DTensors and gradients): ~0.1 s a step together on an H100 host, profiled.

:func:`lean_adapter_switch` gives the PEFT model a ``disable_adapter`` that flips the flag of a list of its LoRA
layers made once (the same flag PEFT's layers read; no ``requires_grad`` toggling, which a no-grad reference
forward does not need); anything but plain LoRA layers keeps PEFT's own. :func:`memoize_parameter_count` caches
the count. :func:`lean_checkpointing_switch` does the same for the activation-checkpointing switch TRL's DPO
flips around every reference forward. :func:`lean_step_walks` makes ``train()`` return at once when the model and its decoder layers are
already in the asked mode, ``zero_grad()`` go over a list of the parameters made once, and the Trainer's clipping
(single process, no fp16 scaler) run ``torch.nn.utils.clip_grad_norm_`` over the trainable parameters only (the
frozen ones never have gradients): the same norm, the same clipping.
"""

from __future__ import annotations

import contextlib
import functools

from .decoder import backbone


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


def distributed_kind(trainer) -> str | None:
    """accelerate's distributed type of ``trainer`` ("NO", "MULTI_GPU", "FSDP", "DEEPSPEED", ...), or None."""
    acc = getattr(trainer, "accelerator", None)
    return getattr(getattr(acc, "distributed_type", None), "value", None)


def lean_step_walks(trainer) -> list[str]:
    """Install the lean ``train``, ``zero_grad`` and gradient clipping on ``trainer`` and its model; returns what
    was installed."""
    import torch

    model = trainer.model
    done = []
    if "train" not in model.__dict__:
        original_train = model.train
        try:
            sentinels = [model, *backbone(model).layers]
        except TypeError:
            sentinels = [model]

        def train(mode: bool = True):
            if all(m.training == mode for m in sentinels):
                return model
            return original_train(mode)

        model.__dict__["train"] = train
        done.append("train")
    if "zero_grad" not in model.__dict__:
        params = list(model.parameters())

        def zero_grad(set_to_none: bool = True) -> None:
            for p in params:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

        model.__dict__["zero_grad"] = zero_grad
        done.append("zero_grad")
    clip = getattr(type(trainer), "_clip_grad_norm", None)
    # one process, no DeepSpeed/FSDP (their clipping is their own), no fp16 loss scaler to unscale first
    single = distributed_kind(trainer) == "NO" and not getattr(trainer.args, "fp16", False)
    if clip is not None and single and "_clip_grad_norm" not in trainer.__dict__:
        trainable = [p for p in model.parameters() if p.requires_grad]

        def _clip_grad_norm(m):
            if m is not model:
                return clip(trainer, m)
            return torch.nn.utils.clip_grad_norm_(trainable, trainer.args.max_grad_norm)

        trainer.__dict__["_clip_grad_norm"] = _clip_grad_norm
        done.append("clip_grad_norm")
    return done


_LEAN_GC: dict[type, type] = {}


def lean_checkpointing_switch(model) -> bool:
    """TRL's DPO switches activation checkpointing off and on around every reference forward; transformers does
    each switch by walking every module (and answers ``is_gradient_checkpointing`` by another walk). After one
    full ``gradient_checkpointing_enable`` the modules that carry the flag are known: the lean switch sets the
    flag on them only. Other arguments than the first full enable's (or ``every_n_layers``) take the full path."""
    if getattr(model, "_orchard_lean_gc", False):
        return True
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not all(hasattr(base, n) for n in ("gradient_checkpointing_enable", "gradient_checkpointing_disable")):
        return False
    state = {"modules": None, "kwargs": None}
    full_enable, full_disable = base.gradient_checkpointing_enable, base.gradient_checkpointing_disable

    def flagged():
        return [m for m in base.modules() if hasattr(m, "gradient_checkpointing")]

    def enable(gradient_checkpointing_kwargs=None, **extra):
        key = (dict(gradient_checkpointing_kwargs or {}), extra)
        lean_ok = extra.get("every_n_layers", 1) == 1 and "every_n_layers" not in key[0]
        if state["modules"] is not None and key == state["kwargs"] and lean_ok:
            for m in state["modules"]:
                m.gradient_checkpointing = True
            return None
        out = full_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs, **extra)
        state["modules"], state["kwargs"] = (flagged(), key) if lean_ok else (None, None)
        return out

    def disable():
        if state["modules"] is None:
            return full_disable()
        for m in state["modules"]:
            m.gradient_checkpointing = False
        return None

    def is_on() -> bool:
        mods = state["modules"] if state["modules"] is not None else flagged()
        return any(m.gradient_checkpointing for m in mods)

    cls = type(model)
    if cls not in _LEAN_GC:
        # Why a class swap: ``is_gradient_checkpointing`` must be answered afresh on every read (the flags change
        # under it), which takes a property, and only a class can carry one (an instance attribute is a fixed
        # value). The subclass holds that property alone and keeps the class name (reprs, saved model cards);
        # the methods go on the instance, and :func:`restore` puts the class back.
        _LEAN_GC[cls] = type(cls.__name__, (cls,), {
            "is_gradient_checkpointing": property(lambda self: self.__dict__["_orchard_gc_is_on"]()),
            "_orchard_lean_gc": True})
    model.__dict__.update(gradient_checkpointing_enable=enable, gradient_checkpointing_disable=disable,
                          _orchard_gc_is_on=is_on)
    if model is not base:
        base.__dict__.update(gradient_checkpointing_enable=enable, gradient_checkpointing_disable=disable)
    model.__class__ = _LEAN_GC[cls]
    return True


def restore(model, trainer=None) -> None:
    """Undo all of them (benchmarks reuse one loaded model for several paths)."""
    for name in ("disable_adapter", "train", "zero_grad", "gradient_checkpointing_enable",
                 "gradient_checkpointing_disable", "_orchard_gc_is_on"):
        model.__dict__.pop(name, None)
    if getattr(type(model), "_orchard_lean_gc", False):
        model.__class__ = type(model).__mro__[1]
    if trainer is not None:
        trainer.__dict__.pop("_clip_grad_norm", None)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for name in ("num_parameters", "gradient_checkpointing_enable", "gradient_checkpointing_disable"):
        base.__dict__.pop(name, None)
