"""Configuration models for align's stages (the recipe YAML keys are these field names).

Every model forbids unknown keys so that a typo in a recipe fails loudly instead of being ignored.
Defaults are sized for a real run on a GPU; the offline quickstart and the tests shrink them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ModelSettings(_Strict):
    """How the base model is loaded and adapted (shared by SFT and DPO)."""

    base_model: str | None = Field(
        None, description="Hub id or local path. Required for SFT; DPO/sampling default to the SFT run's base."
    )
    method: Literal["qlora", "lora", "full"] = "qlora"
    trust_remote_code: bool = False
    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's own.")
    # "auto": bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    bnb_double_quant: bool = True
    # FSDP + QLoRA needs the packed 4-bit weights stored in the same float dtype as the rest of the model.
    bnb_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = "uint8"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"
    # orchard's fast path (orchard.align.fast): padding-free attention within each example, Liger's fused
    # linear cross-entropy, fewer recomputed layers within a memory budget. "auto": on for CUDA GPUs of compute
    # capability >= 8.0, off elsewhere (same loss and gradients: tests/test_fast_path.py).
    fast_path: Literal["auto", "on", "off"] = "auto"
    fast_memory_gib: float = Field(16.0, gt=0, description="peak GPU memory the fast path may plan for")


class TrainSettings(_Strict):
    """Trainer knobs shared by SFT and DPO (names follow transformers' TrainingArguments)."""

    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_steps: float = Field(0.03, description="Steps (int) or a fraction of all steps (< 1).")
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    logging_steps: int = 10
    eval_steps: int | None = Field(None, description="Evaluate every N steps (default: at logging_steps).")
    save_steps: int = 50
    save_total_limit: int | None = 2
    seed: int = 42
    gradient_checkpointing: bool = False
    report_to: str | list[str] = Field(
        "auto", description='"auto" (TensorBoard where installed, logs in the stage folder), "none", "wandb", ...')
    use_liger_kernel: bool = False
    max_length: int = 1024
    dataloader_num_workers: int = 0
    resume: bool = Field(True, description="Resume from the last checkpoint in work_dir when one exists.")
    stop_on_nan: bool = True

    @field_validator("logging_steps", "save_steps")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1")
        return v


class SFTConfig(ModelSettings, TrainSettings):
    """Supervised fine-tuning on a `messages` dataset folder."""

    assistant_only_loss: bool = True
    packing: bool = False
    # Validation set for early stopping, carved from train by lineage (seed_id) so that no seed's
    # descendants sit on both sides. The upstream test split is only scored once, at the end.
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    early_stopping_patience: int | None = Field(3, description="Evaluations without improvement; None = off.")
    early_stopping_threshold: float = 0.0
    load_best_model_at_end: bool = True


class DPOConfig(ModelSettings, TrainSettings):
    """Preference optimisation on top of an SFT (or a previous DPO) adapter."""

    learning_rate: float = 5e-6
    algorithm: Literal["dpo", "orpo", "simpo", "cpo"] = "dpo"
    loss_type: list[str] | str = Field("sigmoid", description="TRL DPO loss(es): sigmoid, ipo, hinge, robust, ...")
    loss_weights: list[float] | None = None
    beta: float = 0.1
    label_smoothing: float = 0.0
    simpo_gamma: float = 0.5
    precompute_ref_log_probs: bool = False
    init_adapter: str | None = Field(
        None, description="Start from this adapter folder (e.g. a previous DPO output) instead of sft_dir's."
    )
    max_completion_length: int | None = Field(None, description="ORPO/SimPO/CPO only.")
    final_eval_max_pairs: int | None = Field(128, description="Train pairs scored after training (None = all).")

    @field_validator("loss_type")
    @classmethod
    def _as_list(cls, v):
        return [v] if isinstance(v, str) else v


class SampleConfig(_Strict):
    """Sampling completions from a policy (RLAIF candidates, policy pairs, eval comparisons)."""

    num_completions: int = Field(2, ge=1)
    max_new_tokens: int = 128
    temperature: float = 0.8
    top_p: float = 0.95
    batch_size: int = 8
    seed: int = 1234
    split: str = "train"
    max_prompts: int | None = None
    # Generation runs on a separate, non-quantized copy of base + adapter (merged): a 4-bit model on CPU
    # must not generate between training steps (see docs), and merging makes sampling faster.
    quantized: bool = Field(False, description="Generate with a 4-bit base (GPU only; saves memory for 8B).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class EvalConfig(_Strict):
    """Held-out evaluation of base, SFT and DPO policies."""

    split: str = "test"
    batch_size: int = 8
    max_length: int = 1024
    beta: float = 0.1
    max_examples: int | None = None
    general_dir: str | None = Field(
        None, description="A dataset folder (messages) of general text for the forgetting check."
    )
    general_split: str = "train"
    include_base: bool = True
    quantized: bool = False
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


def load_config(cls: type[_Strict], path: str | Path | None, overrides: dict | None = None) -> _Strict:
    """Read a YAML file of one config block and apply overrides (CLI flags); errors name the file and field."""
    import yaml
    from pydantic import ValidationError

    from orchard.errors import InputError

    data: dict = {}
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise InputError("config file not found", path=p)
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            line = getattr(getattr(e, "problem_mark", None), "line", None)
            raise InputError(f"invalid YAML: {e}", path=p, line=None if line is None else line + 1) from None
        if not isinstance(data, dict):
            raise InputError("expected a mapping of config keys", path=p)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise InputError(err["msg"], path=path, field=field) from None
