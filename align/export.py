"""Merge a LoRA adapter into its (non-quantized) base and save a standalone model as safetensors."""

from __future__ import annotations

import time
from pathlib import Path

from orchard.dataio import atomic_dir
from orchard.errors import InputError

from .modeling import ModelSettings, adapter_path, load_base, load_tokenizer, read_policy_info


def export_merged(base_model: str | None, adapter_dir: str | Path, out_path: str | Path, dtype: str = "auto",
                  trust_remote_code: bool | None = None) -> dict:
    """Merge ``adapter_dir`` (a policy folder or a PEFT adapter folder) into ``base_model`` at full precision.

    Merging into 4-bit weights would round the adapter away, so the base is always loaded unquantized.
    ``base_model=None`` takes it from the policy folder. Writes ``out_path`` atomically (model + tokenizer).
    """
    from peft import PeftModel

    t0 = time.perf_counter()
    adapter_dir = Path(adapter_dir)
    info = read_policy_info(adapter_dir) if (adapter_dir / "policy.json").exists() else {}
    base = base_model or info.get("base_model")
    if not base:
        raise InputError("no base model given and none recorded next to the adapter", path=adapter_dir,
                         field="base_model")
    ad = adapter_path(adapter_dir)
    if ad is None:
        raise InputError("no PEFT adapter here (adapter_config.json)", path=adapter_dir)
    trc = info.get("trust_remote_code", False) if trust_remote_code is None else trust_remote_code
    settings = ModelSettings(base_model=base, method="lora", dtype=dtype, trust_remote_code=trc)
    model = load_base(base, settings, quantized=False)
    merged = PeftModel.from_pretrained(model, str(ad)).merge_and_unload()
    merged.eval()
    tok_dir = adapter_dir / "tokenizer"
    tok = load_tokenizer(tok_dir if tok_dir.exists() else base, info.get("chat_template"), trc)
    with atomic_dir(out_path) as tmp:
        merged.save_pretrained(str(tmp), safe_serialization=True)
        tok.save_pretrained(str(tmp))
    n = sum(p.numel() for p in merged.parameters())
    return {"stage": "export", "base_model": str(base), "adapter": str(ad), "out": str(out_path),
            "parameters": n, "time_s": round(time.perf_counter() - t0, 2)}
