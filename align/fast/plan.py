"""Deciding and applying the fast path: what the hardware and the installed libraries support, and what it turns on.

``decide(FastConfig(mode="auto"))`` turns the fast path on for CUDA GPUs of compute capability 8.0 or newer (bf16
and SDPA's flash kernel) and off elsewhere, with the reason; ``"on"`` forces the hardware-independent part
(padding-free forward, fused LoRA), which is what the CPU tests exercise; ``"off"`` is the plain TRL path. Either
way an unknown torch/transformers/TRL/PEFT/bitsandbytes version, or a private name missing from one, falls back
to the plain path with the reason (:mod:`orchard.align.fast.compat`).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import torch

from . import compat

if TYPE_CHECKING:
    from ..config import FastConfig

log = logging.getLogger(__name__)

# memory_budget "auto": what the card has free, less this margin for what the planner's peak (allocated tensors)
# does not count: the CUDA context, cuBLAS workspaces and the caching allocator's fragmentation.
AUTO_MARGIN_GIB = 2.0
AUTO_MARGIN_FRACTION = 0.05  # of the card's memory, on top


@dataclass
class FastPlan:
    """What the fast path does in this run: the switches of the config as decided for this machine, and what
    ``decide`` derived (padding-free forward, Liger, fused LoRA, folded accumulation). ``apply`` reads only this."""

    enabled: bool
    reason: str
    unpad: bool = False  # padding-free forward with attention kept within each example
    liger: bool = False  # Liger kernels (RMSNorm, RoPE, SwiGLU; fused linear cross-entropy for SFT)
    varlen_attention: bool = False  # FastConfig.varlen_attention
    shared_prefix: bool = False  # DPOFastConfig.shared_prefix (preference trainers only)
    fused_lora: bool = False  # LoRA update added by one addmm instead of PEFT's clone + matmuls + scale + add
    fused_layers: bool = False  # FastConfig.fused_layers
    mlp_tail: bool = False  # FastConfig.mlp_tail
    direct_dequant: bool = False  # FastConfig.direct_dequant
    fold_accumulation: bool = False  # gradient accumulation folded into larger micro batches that fit the budget
    keep_layers: int | str = 0  # decoder layers left out of activation checkpointing, or "auto"
    memory_budget_gib: float | None = None  # what "auto" may fill (None: no GPU planning)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def _liger_ok() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None and importlib.util.find_spec("triton") is not None


def auto_budget_gib(free_bytes: int, total_bytes: int, reserved_bytes: int) -> float:
    """``memory_budget: auto``: the card's free memory plus what this process's allocator already holds (the
    model, loaded before the plan is made), less a margin."""
    margin = AUTO_MARGIN_GIB + AUTO_MARGIN_FRACTION * total_bytes / 2**30
    return max(1.0, (free_bytes + reserved_bytes) / 2**30 - margin)


def _budget(value: float | str, gpu: bool) -> float | None:
    if value != "auto":
        return float(value)
    if not gpu:
        return None  # on CPU nothing is planned against GPU memory
    free, total = torch.cuda.mem_get_info()
    return round(auto_budget_gib(free, total, torch.cuda.memory_reserved()), 2)


def decide(config: FastConfig | str = "auto") -> FastPlan:
    """The plan for this machine from ``config`` (a FastConfig or DPOFastConfig; a bare mode string stands for
    ``FastConfig(mode=...)``)."""
    from ..config import FastConfig

    cfg = FastConfig(mode=config) if isinstance(config, str) else config
    mode = cfg.mode
    if mode == "off":
        return FastPlan(False, "fast.mode: off")
    gpu = torch.cuda.is_available()
    cc = torch.cuda.get_device_capability() if gpu else None
    modern = bool(cc and cc >= (8, 0))
    if mode == "auto" and not modern:
        why = "no CUDA GPU" if not gpu else f"GPU compute capability {cc[0]}.{cc[1]} < 8.0"
        return FastPlan(False, f"{why}: plain TRL path")
    unknown = compat.problems(gpu)
    if unknown:
        why = f"fast path off ({'; '.join(unknown)}): plain TRL path"
        log.warning(why)
        return FastPlan(False, why)
    plan = FastPlan(True, "fast.mode: on" if mode == "on" else f"CUDA GPU, compute capability {cc[0]}.{cc[1]}",
                    unpad=True, fused_lora=True, fold_accumulation=gpu, keep_layers=cfg.keep_layers if gpu else 0,
                    memory_budget_gib=_budget(cfg.memory_budget, gpu), varlen_attention=cfg.varlen_attention,
                    shared_prefix=getattr(cfg, "shared_prefix", False), fused_layers=cfg.fused_layers,
                    mlp_tail=cfg.mlp_tail, direct_dequant=cfg.direct_dequant)
    if cfg.memory_budget == "auto" and plan.memory_budget_gib is not None:
        plan.notes.append(f"memory budget auto: {plan.memory_budget_gib} GiB (free on the card, less a margin)")
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
    if (plan.enabled and plan.fold_accumulation and plan.memory_budget_gib is not None and model is not None
            and ga > 1):
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
    from .decoder import backbone

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
    # imported here: the patching modules pull in transformers and PEFT, which deciding does not need
    from . import host, layer, lora, unpad
    from .checkpointing import PartialCheckpointing

    done = {"fast_path": plan.enabled, "reason": plan.reason}
    if not plan.enabled:
        return done
    if plan.unpad:
        share = plan.shared_prefix and hasattr(trainer.args, "beta")  # a preference trainer: [chosen; rejected]
        unpad.enable(trainer.model, varlen_attention=plan.varlen_attention, shared_prefix=share)
        done["padding_free"] = True
        if share:
            done["shared_prefix"] = True
    if plan.fused_lora:
        done["fused_lora_layers"] = lora.enable(trainer.model)
    if plan.unpad and plan.fused_layers:
        why_not = _shards_parameters(trainer)
        if why_not:
            done.setdefault("notes", []).append(f"hand-fused layers off: {why_not}")
        else:
            done["fused_decoder_layers"] = layer.enable(trainer.model, mlp_tail=plan.mlp_tail,
                                                        direct_dequant=plan.direct_dequant)
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
