"""Loading base models, tokenizers and policies (base + LoRA adapter) for training and for inference.

A *policy folder* is what sft_stage/dpo_stage write: ``adapter/`` (PEFT, safetensors) or ``model/`` (full
fine-tune), ``tokenizer/`` and ``policy.json`` naming the base model and method, so that later stages need
only the folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from orchard.errors import InputError

from .config import LoraSettings, ModelSettings

log = logging.getLogger(__name__)

POLICY_FILE = "policy.json"


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def load_tokenizer(src: str | Path, chat_template: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(src), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load a tokenizer: {e}", path=src, field="base_model") from None
    if chat_template:
        tok.chat_template = chat_template
    if not tok.chat_template:
        raise InputError(
            "the tokenizer has no chat template; set `chat_template` in the config", path=src, field="chat_template"
        )
    if tok.pad_token is None:
        # Padding is masked out of every loss; reusing EOS avoids resizing the embeddings.
        tok.pad_token = tok.eos_token
    return tok


def guard_cpu_4bit(model) -> int:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference.

    On CPUs with avx512_bf16, a no-grad forward in eval mode converts Linear4bit weights to an inference
    layout; LoRA gradients computed afterwards are silently wrong. Switching the fast path off per layer
    makes evaluation (and early stopping) safe between training steps. Returns the number of layers guarded.
    """
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def load_base(base_model: str | Path, settings: ModelSettings, quantized: bool | None = None, dtype: str | None = None):
    """Load the base causal LM, 4-bit NF4 (double quant) when ``quantized`` (default: method == qlora).

    The model is returned in train mode: bitsandbytes' CPU trap needs train() before any forward.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quantized = settings.method == "qlora" if quantized is None else quantized
    torch_dtype = resolve_dtype(dtype or settings.dtype)
    kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": settings.trust_remote_code}
    if settings.attn_implementation:
        kwargs["attn_implementation"] = settings.attn_implementation
    if quantized:
        storage = {"uint8": torch.uint8, "bfloat16": torch.bfloat16, "float16": torch.float16,
                   "float32": torch.float32}[settings.bnb_quant_storage]
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=settings.bnb_double_quant,
            bnb_4bit_compute_dtype=torch_dtype,
            bnb_4bit_quant_storage=storage,
        )
        kwargs["device_map"] = {"": _local_device_index()}
    try:
        model = AutoModelForCausalLM.from_pretrained(str(base_model), **kwargs)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load base model: {e}", path=base_model, field="base_model") from None
    if quantized and device() == "cpu":
        guard_cpu_4bit(model)
    model.train()
    return model


def _local_device_index():
    import os

    if not torch.cuda.is_available():
        return "cpu"
    return int(os.environ.get("LOCAL_RANK", "0"))


def lora_config(settings: LoraSettings):
    """PEFT's LoraConfig from the recipe's ``sft.lora_*`` keys (DPO continues the adapter SFT saved)."""
    from peft import LoraConfig

    return LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target_modules,
        task_type="CAUSAL_LM",
    )


# ---- policy folders -------------------------------------------------------------------------------


def write_policy_info(out_dir: Path, info: dict) -> None:
    from orchard.dataio import atomic_write_json

    atomic_write_json(Path(out_dir) / POLICY_FILE, info)


def read_policy_info(policy_dir: str | Path) -> dict:
    p = Path(policy_dir) / POLICY_FILE
    if not p.exists():
        raise InputError(f"not a policy folder (no {POLICY_FILE}; expected the output of `sft` or `dpo`)",
                         path=policy_dir)
    return json.loads(p.read_text(encoding="utf-8"))


def adapter_path(policy_dir: str | Path) -> Path | None:
    """The PEFT adapter folder of a policy folder (or an adapter folder itself); None for a full fine-tune."""
    d = Path(policy_dir)
    if (d / "adapter_config.json").exists():
        return d
    if (d / "adapter" / "adapter_config.json").exists():
        return d / "adapter"
    return None


def policy_tokenizer(policy_dir: str | Path, info: dict):
    tok_dir = Path(policy_dir) / "tokenizer"
    src = tok_dir if tok_dir.exists() else info["base_model"]
    return load_tokenizer(src, info.get("chat_template"), info.get("trust_remote_code", False))


def load_trainable_policy(init_dir: str | Path, settings: ModelSettings, base_model: str):
    """Base + the adapter in ``init_dir`` (a policy folder or an adapter folder), adapter trainable.

    DPO starts here. A policy folder holding a full fine-tune (``model/``) loads whole instead.
    """
    from peft import PeftModel

    ad = adapter_path(init_dir)
    if ad is None:
        full = Path(init_dir) / "model"
        if not full.exists():
            raise InputError("no adapter/ or model/ to start from", path=init_dir)
        model = load_base(full, settings, quantized=False)
        return model
    model = load_base(base_model, settings)
    if settings.method == "qlora":
        # What PEFT's prepare_model_for_kbit_training does, less its upcast of every non-quantized weight to fp32:
        # the SFT stage (TRL's own QLoRA setup) trains this adapter with the embeddings, norms and LM head in the
        # compute dtype, and an fp32 LM head and residual stream made the DPO stage several times slower on an
        # H100 (fp32 GEMMs over the 128k vocabulary) at more memory.
        for p in model.parameters():
            p.requires_grad_(False)
        if settings_gc(settings) and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    model = PeftModel.from_pretrained(model, str(ad), is_trainable=True)
    model.train()
    return model


def settings_gc(settings) -> bool:
    return bool(getattr(settings, "gradient_checkpointing", False))


def load_inference_policy(policy_dir: str | Path | None, base_model: str | None = None, *, quantized: bool = False,
                          dtype: str = "auto", trust_remote_code: bool | None = None):
    """A separate model for generation or scoring: base (+ adapter merged in), non-quantized by default.

    ``policy_dir=None`` loads the bare base model. Returns (model in eval mode, tokenizer, info).
    """
    from peft import PeftModel

    info = read_policy_info(policy_dir) if policy_dir is not None else {"base_model": base_model}
    base = base_model or info["base_model"]
    trc = info.get("trust_remote_code", False) if trust_remote_code is None else trust_remote_code
    settings = ModelSettings(base_model=base, method="qlora" if quantized else "lora", trust_remote_code=trc,
                             dtype=dtype)
    ad = adapter_path(policy_dir) if policy_dir is not None else None
    if policy_dir is not None and ad is None:
        model = load_base(Path(policy_dir) / "model", settings, quantized=False)
    else:
        model = load_base(base, settings, quantized=quantized)
        if ad is not None:
            model = PeftModel.from_pretrained(model, str(ad))
            if not quantized:
                model = model.merge_and_unload()
    model.eval()
    tok = policy_tokenizer(policy_dir, info) if policy_dir is not None else load_tokenizer(base, None, trc)
    if not torch.cuda.is_available():
        model.to("cpu")
    elif not quantized:
        model.to(device())
    return model, tok, info
