"""Deciding and applying the fast path: what the hardware supports, and the switches it turns on.

``decide("auto")`` turns the fast path on for CUDA GPUs of compute capability 8.0 or newer (bf16 and SDPA's flash
kernel) and off elsewhere, with the reason; ``"on"`` forces the hardware-independent part (padding-free forward),
which is what the CPU tests exercise; ``"off"`` is the plain TRL path.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import asdict, dataclass, field

import torch


@dataclass
class FastPlan:
    enabled: bool
    reason: str
    unpad: bool = False  # padding-free forward with attention kept within each example
    liger: bool = False  # Liger kernels (RMSNorm, RoPE, SwiGLU; fused linear cross-entropy for SFT)
    # on CUDA, one variable-length flash call per layer instead of one per example; ORCHARD_FAST_VARLEN=0 turns
    # it off (a build whose flash kernel misbehaves; measurements)
    varlen_attention: bool = field(default_factory=lambda: os.environ.get("ORCHARD_FAST_VARLEN", "1") != "0")
    # DPO: each pair's prompt computed once for chosen and rejected (fast.prefix); ORCHARD_FAST_SHARED_PREFIX=0 off
    shared_prefix: bool = field(default_factory=lambda: os.environ.get("ORCHARD_FAST_SHARED_PREFIX", "1") != "0")
    fused_lora: bool = False  # LoRA update added by one addmm instead of PEFT's clone + matmuls + scale + add
    # Llama-style decoder layers run hand-fused (fast.layer: one autograd node per group of linears, cached
    # dequantization scales); ORCHARD_FAST_FUSED_LAYERS=0 turns it off
    fused_layers: bool = field(default_factory=lambda: os.environ.get("ORCHARD_FAST_FUSED_LAYERS", "1") != "0")
    # with them: the SwiGLU product recomputed in the down projection's backward instead of kept (a kept layer
    # stores 2 intermediate-sized tensors, not 3), and a checkpointed layer's recomputation skips the down
    # projection, whose output it discards; ORCHARD_FAST_MLP_TAIL=0 turns it off
    mlp_tail: bool = field(default_factory=lambda: os.environ.get("ORCHARD_FAST_MLP_TAIL", "1") != "0")
    fold_accumulation: bool = False  # gradient accumulation folded into larger micro batches that fit the budget
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
                    unpad=True, fused_lora=True, fold_accumulation=gpu, keep_layers=keep_layers if gpu else 0,
                    memory_budget_gib=memory_budget_gib)
    plan.liger = gpu and _liger_ok()
    if gpu and not plan.liger:
        plan.notes.append("liger-kernel not installed: install orchard[gpu] for its fused kernels")
    return plan


def trainer_kwargs(kw: dict, plan: FastPlan, model=None, tokens_per_example: int | None = None) -> dict:
    """Adjust TRL config keyword arguments before the trainer is built (returns a new dict).

    With ``fold_accumulation`` and the loaded ``model``, ``gradient_accumulation_steps`` is folded into the micro
    batch as far as the memory budget allows (``tokens_per_example``: the longest example, twice the maximum
    length for DPO's chosen + rejected; default ``max_length`` of ``kw`` or 2,048). The
    optimizer sees the same examples per step and the same loss (TRL and transformers normalise an accumulated
    step's loss over all its tokens or pairs), but each forward and backward covers more tokens, so the fixed
    costs of a pass (4-bit dequantization, kernel launches, Python) are paid fewer times.
    """
    kw = dict(kw)
    if plan.enabled and plan.liger:
        kw["use_liger_kernel"] = True
    ga = int(kw.get("gradient_accumulation_steps") or 1)
    if plan.enabled and plan.fold_accumulation and model is not None and ga > 1:
        bs = int(kw.get("per_device_train_batch_size") or 8)
        tokens = tokens_per_example or int(kw.get("max_length") or 2048)
        f = fold_factor(model, bs, ga, tokens, plan.memory_budget_gib)
        if f > 1:
            kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"] = bs * f, ga // f
            plan.notes.append(f"gradient accumulation {ga} x {bs} folded into {ga // f} x {bs * f} examples")
    return kw


def fold_factor(model, batch_size: int, accumulation: int, tokens_per_example: int, budget_gib: float,
                margin_gib: float = 1.0) -> int:
    """The largest divisor f of ``accumulation`` whose micro batch (``batch_size * f`` examples of at most
    ``tokens_per_example`` tokens) fits the budget: the model's own bytes plus, per token, the checkpointed layer
    inputs and one decoder layer's activations during its recomputation (from
    :func:`orchard.align.fast.checkpointing.layer_bytes_per_token`; measured peaks stayed under this)."""
    from .checkpointing import layer_bytes_per_token, residual_bytes
    from .unpad import backbone

    try:
        inner = backbone(model)
    except TypeError:
        return 1
    cfg = inner.config
    static = sum(p.numel() * p.element_size() for p in model.parameters())
    static += sum(b.numel() * b.element_size() for b in model.buffers())
    hb = residual_bytes(model)
    per_token = hb * cfg.hidden_size * len(inner.layers) + layer_bytes_per_token(cfg, hb)
    room = (budget_gib - margin_gib) * 2**30 - static
    best = 1
    for f in range(1, accumulation + 1):
        if accumulation % f == 0 and batch_size * f * tokens_per_example * per_token <= room:
            best = f
    return best


def _shards_parameters(trainer) -> str | None:
    """Why the hand-fused layers must stay off for this trainer, or None. They read each 4-bit weight's packed
    bytes and block scales directly (kept from when they were enabled); FSDP and DeepSpeed ZeRO shard and
    regather parameters behind the module, so only the modules' own forwards see them whole."""
    from .host import distributed_kind

    kind = distributed_kind(trainer)
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        return f"{kind} shards the parameters"
    return None


def apply(trainer, plan: FastPlan) -> dict:
    """Patch a built TRL trainer's model in place; returns what was applied (for metrics/manifests)."""
    from . import attention, host, layer, lora, unpad
    from .checkpointing import PartialCheckpointing

    done = {"fast_path": plan.enabled, "reason": plan.reason}
    if not plan.enabled:
        return done
    if plan.unpad:
        unpad.enable(trainer.model)
        attention.USE_VARLEN[0] = plan.varlen_attention
        done["padding_free"] = True
        if plan.shared_prefix and hasattr(trainer.args, "beta"):  # a preference trainer: [chosen; rejected]
            unpad.backbone(trainer.model).__dict__["_orchard_share_prefix"] = True
            done["shared_prefix"] = True
    if plan.fused_lora:
        done["fused_lora_layers"] = lora.enable(trainer.model)
    if plan.unpad and plan.fused_layers:
        why_not = _shards_parameters(trainer)
        if why_not:
            done.setdefault("notes", []).append(f"hand-fused layers off: {why_not}")
        else:
            done["fused_decoder_layers"] = layer.enable(trainer.model, mlp_tail=plan.mlp_tail)
    # host-side walks over every module that TRL/PEFT/the Trainer repeat each step (see fast.host)
    done["lean_adapter_switch"] = host.lean_adapter_switch(trainer.model)
    host.memoize_parameter_count(trainer.model)
    done["lean_step_walks"] = host.lean_step_walks(trainer)
    done["lean_checkpointing_switch"] = host.lean_checkpointing_switch(trainer.model)
    if plan.notes:
        done["notes"] = list(plan.notes) + done.get("notes", [])
    if plan.keep_layers and trainer.args.gradient_checkpointing:
        args = trainer.args
        rows = args.per_device_train_batch_size * (2 if hasattr(args, "beta") else 1)  # DPO: chosen + rejected
        cb = PartialCheckpointing(plan.keep_layers, plan.memory_budget_gib, rows * (args.max_length or 2048))
        trainer.add_callback(cb)
        done["layers_not_checkpointed"] = plan.keep_layers
    done["liger"] = bool(trainer.args.use_liger_kernel)
    return done


def finish(trainer, done: dict) -> dict:
    """After training: what the kept-layer planner did (per batch, and corrections after a step that went over
    the memory budget) and the peak GPU memory since training began, into ``done`` (returned)."""
    from .checkpointing import PartialCheckpointing

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, PartialCheckpointing):
            done["layers_not_checkpointed"] = cb.report()
    if done.get("fast_path") and torch.cuda.is_available():
        done["peak_gib_since_train_begin"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return done
