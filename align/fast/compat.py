"""Whether the libraries installed are ones the fast path is known to work with.

The fast path reaches into private parts of torch, transformers, PEFT and bitsandbytes (listed in ``PRIVATE``) and
relies on how TRL lays out its batches, while orchard's own pins are open-ended (``>=``). :func:`problems` checks
the installed versions against the ranges measured and the presence of every private name used; the plan
(:func:`orchard.align.fast.plan.decide`) falls back to the plain TRL path, with the reason, when one is off.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from packaging.version import InvalidVersion, Version

# distribution -> (lowest known to work, first version not yet known), as "major.minor" release numbers.
# Measured: torch 2.11 (GPU image, H100/H200 runs with transformers 5.17) and 2.13 (CPU test suite with
# transformers 5.23-5.25), TRL 1.16, PEFT 0.21, bitsandbytes 0.50 on both. The lower bounds are orchard's own pins
# where the code needs nothing newer (transformers 5's attention interface, TRL 1.10's DPO batch layout,
# bitsandbytes 0.46's registered torch ops); torch's is 2.11, the oldest the GPU kernels were checked on. The upper
# bounds are the next minor release after the newest measured (transformers: the next major), since minor
# releases of these libraries have moved the private names listed below. Widen a range after
# tests/test_fast_path.py (CPU) and tests/test_fast_path_gpu.py (GPU) pass on the new version.
KNOWN = {
    "torch": ("2.11", "2.14"),
    "transformers": ("5.0", "6.0"),
    "trl": ("1.10", "1.17"),
    "peft": ("0.17", "0.22"),
    "bitsandbytes": ("0.46", "0.51"),
}
OPTIONAL = {"bitsandbytes"}  # only 4-bit (QLoRA) models need it

# (module, attribute path, needed where): every private or internal name the fast path uses.
# "any": on CPU and GPU; "cuda": only where it runs on a GPU; "bnb": only once bitsandbytes is imported (a
# quantized model is loaded), so that checking never imports it (its import prints warnings on a CPU).
PRIVATE = [
    # layer._recomputing: whether a forward is non-reentrant checkpointing's recomputation
    ("torch._C._autograd", "_top_saved_tensors_default_hooks", "any"),
    ("torch.utils.checkpoint", "_recomputation_hook", "any"),
    # layer: the adapter-cast cache counts optimizer steps
    ("torch.optim.optimizer", "register_optimizer_step_post_hook", "any"),
    # attention: one variable-length flash call per layer; layer: bitsandbytes' C call on the current stream
    ("torch.ops.aten", "_flash_attention_forward", "cuda"),
    ("torch.ops.aten", "_flash_attention_backward", "cuda"),
    ("torch._C", "_cuda_getCurrentRawStream", "cuda"),
    # unpad/attention: the packed attention registered by name, plain SDPA for everything else
    ("transformers", "AttentionInterface.register", "any"),
    ("transformers.integrations.sdpa_attention", "sdpa_attention_forward", "any"),
    ("transformers", "PretrainedConfig._attn_implementation", "any"),
    # host: the Trainer's gradient clipping over the trainable parameters only
    ("transformers", "Trainer._clip_grad_norm", "any"),
    # host: the lean adapter switch flips PEFT's own flags
    ("peft.tuners.tuners_utils", "BaseTunerLayer._disable_adapters", "any"),
    ("peft.tuners.lora", "LoraLayer", "any"),
    ("peft.utils", "ModulesToSaveWrapper", "any"),
    # layer: 4-bit weights dequantized by bitsandbytes' op, its double-quantized scales once
    ("torch.ops.bitsandbytes", "dequantize_4bit", "bnb"),
    ("bitsandbytes.functional", "dequantize_blockwise", "bnb"),
]


def installed_version(dist: str) -> str | None:
    """The installed version of distribution ``dist``, or None (tests monkeypatch this)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _release(v: str) -> tuple[int, ...]:
    return Version(v).release


def version_problems() -> list[str]:
    out = []
    for dist, (low, high) in KNOWN.items():
        got = installed_version(dist)
        if got is None:
            if dist not in OPTIONAL:
                out.append(f"{dist} is not installed")
            continue
        try:
            rel = _release(got)
        except InvalidVersion:
            out.append(f"{dist} {got}: not a version this check can read")
            continue
        if not (_release(low) <= rel < _release(high)):
            out.append(f"{dist} {got} is outside the versions it is known to work with (>={low}, <{high})")
    return out


def _present(module: str, path: str) -> bool:
    try:
        obj = importlib.import_module(module) if not module.startswith("torch.ops") else _torch_ops(module)
        for part in path.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, RuntimeError):
        return False
    return True


def _torch_ops(module: str):
    import torch

    obj = torch.ops
    for part in module.split(".")[2:]:
        obj = getattr(obj, part)
    return obj


def attribute_problems(gpu: bool) -> list[str]:
    out = []
    bnb = "bitsandbytes" in sys.modules
    for module, path, where in PRIVATE:
        if (where == "cuda" and not gpu) or (where == "bnb" and not bnb):
            continue
        if not _present(module, path):
            out.append(f"{module}.{path} is missing")
    return out


def problems(gpu: bool) -> list[str]:
    """Everything that makes the installed libraries unknown ground for the fast path (empty: all known)."""
    return version_problems() + attribute_problems(gpu)
