"""Configuration models for align's stages (the recipe YAML keys are these field names; the recipe embeds them).

Every model forbids unknown keys so that a typo in a recipe fails loudly instead of being ignored, and each field
acts in the stage that takes it: a key that would be read by nothing (``dpo.lora_r``: DPO continues the SFT
adapter) is rejected with the reason. Defaults are sized for a real run on a GPU; the offline quickstart and the
tests shrink them.
"""

from __future__ import annotations

import functools
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from orchard.schema import ModelRef, Strict


class FastConfig(Strict):
    """orchard's GPU training fast path (``orchard.align.fast``; its README lists what each part does).

    Same loss and gradients as the plain TRL path (tests/test_fast_path.py); with an untested torch, transformers,
    TRL, PEFT or bitsandbytes version the stage trains on the plain path and says why."""

    mode: Literal["auto", "on", "off"] = Field(
        "auto", description="auto: on for CUDA GPUs of compute capability >= 8.0, off elsewhere; on: forced (on CPU "
        "the padding-free forward and fused LoRA layers only); off: the plain TRL path")
    memory_budget: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        16.0, description="peak GPU memory (GiB) the fast path plans for when it folds gradient accumulation and "
        "leaves layers out of checkpointing; auto: what the card has free when training starts, less a margin")
    keep_layers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto", description="decoder layers left out of activation checkpointing (with gradient_checkpointing on "
        "a GPU); auto: chosen per batch within memory_budget")
    varlen_attention: bool = Field(
        True, description="one variable-length flash-attention call per layer for all examples of a batch (CUDA); "
        "off: one SDPA call per example")
    fused_layers: bool = Field(
        True, description="Llama/Mistral/Qwen2-style decoder layers run hand-fused: one autograd node per group of "
        "linears with their LoRA, 4-bit block scales dequantized once (off under FSDP/DeepSpeed regardless)")
    mlp_tail: bool = Field(
        True, description="with fused_layers: the SwiGLU product recomputed in the down projection's backward "
        "instead of kept, and skipped in a checkpointed layer's recomputation")
    direct_dequant: bool = Field(
        True, description="with fused_layers: 4-bit weights dequantized through bitsandbytes' C entry point "
        "(checked once against its torch op) instead of its Python-wrapped op")

    @field_validator("memory_budget", "keep_layers", mode="wrap")
    @classmethod
    def _number_or_auto(cls, v, handler, info):
        try:
            return handler(v)
        except ValidationError:  # one message, not one per member of the union
            what = "GiB > 0" if info.field_name == "memory_budget" else "a number of layers >= 0"
            raise PydanticCustomError("number_or_auto", f"expected {what}, or auto") from None

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_booleans(cls, v):
        # YAML 1.1 reads a bare on/off as a boolean: `mode: off` must mean "off"
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v


class DPOFastConfig(FastConfig):
    """The fast path for preference training: also each pair's shared prompt computed once."""

    shared_prefix: bool = Field(
        True, description="each pair's prompt computed once for the chosen and the rejected row")


def _reject(data: Any, handler, why: dict[str, str]):
    """Validate ``data`` with the keys of ``why`` reported as errors at their own location (so that the recipe's
    error names ``dpo.lora_r`` and its line), together with every other error of the block."""
    found = {k: m for k, m in why.items() if isinstance(data, dict) and k in data}
    if not found:
        return handler(data)
    errors = [InitErrorDetails(type=PydanticCustomError("not_here", m), loc=(k,), input=data[k])
              for k, m in found.items()]
    try:
        handler({k: v for k, v in data.items() if k not in found})
    except ValidationError as e:
        # re-raised as they were (type and message kept: orchard.schema words unknown keys from the type)
        errors += [InitErrorDetails(type=PydanticCustomError(err["type"], err["msg"]), loc=err["loc"],
                                    input=err.get("input")) for err in e.errors()]
    raise ValidationError.from_exception_data("config", errors)


@functools.cache
def _defaults(cls):
    return cls()


def _acts_only(model, rules: dict[str, tuple[bool, str]]) -> None:
    """After validation: fields set explicitly, to something other than their default, where they do not act
    (``rules``: field -> (acts, why not)). A default value passes, so that a dumped config validates again."""
    bad = {k: why for k, (acts, why) in rules.items()
           if not acts and k in model.model_fields_set and getattr(model, k) != getattr(_defaults(type(model)), k)}
    if bad:
        raise ValidationError.from_exception_data("config", [
            InitErrorDetails(type=PydanticCustomError("not_here", why), loc=(k,), input=getattr(model, k))
            for k, why in bad.items()])


class ModelSettings(Strict):
    """How the base model is loaded (shared by SFT, DPO and the inference copies)."""

    base_model: ModelRef | None = Field(
        None, description="Hub id, local path or run:<stage>. Required for SFT; DPO defaults to the SFT run's base."
    )
    method: Literal["qlora", "lora", "full"] = Field(
        "qlora", description="qlora: LoRA on a 4-bit base; lora: on a bf16/fp32 base; full: every weight trained")
    trust_remote_code: bool = False
    # "auto": bf16 on a GPU that supports it, fp32 on CPU (bf16 matmuls are slow on most CPUs).
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: str | None = None
    bnb_double_quant: bool = Field(True, description="qlora: quantize the 4-bit block scales too")
    # FSDP + QLoRA needs the packed 4-bit weights stored in the same float dtype as the rest of the model.
    bnb_quant_storage: Literal["uint8", "bfloat16", "float16", "float32"] = Field(
        "uint8", description="qlora: the dtype the packed 4-bit weights are stored in")


class LoraSettings(Strict):
    """The LoRA adapter SFT creates (DPO continues it, so these are SFT's keys only)."""

    lora_r: int = Field(16, ge=1)
    lora_alpha: int = 32
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0)
    lora_target_modules: list[str] | Literal["all-linear"] = "all-linear"


class TrainSettings(Strict):
    """Trainer knobs shared by SFT and DPO (names follow transformers' TrainingArguments)."""

    learning_rate: float = 2e-4
    num_train_epochs: float = 1.0
    max_steps: int = Field(-1, description="optimizer steps; -1: as many as num_train_epochs give")
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


class SFTConfig(ModelSettings, LoraSettings, TrainSettings):
    """Supervised fine-tuning on a `messages` dataset folder."""

    chat_template: str | None = Field(None, description="Jinja chat template overriding the tokenizer's own.")
    assistant_only_loss: bool = True
    packing: bool = False
    # Validation set for early stopping, carved from train by lineage (seed_id) so that no seed's
    # descendants sit on both sides. The upstream test split is only scored once, at the end.
    validation_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    early_stopping_patience: int | None = Field(3, description="Evaluations without improvement; None = off.")
    early_stopping_threshold: float = 0.0
    load_best_model_at_end: bool = True
    fast: FastConfig = Field(default_factory=FastConfig, description="the GPU training fast path")

    @model_validator(mode="after")
    def _fields_act(self):
        full = self.method == "full"
        _acts_only(self, {
            **{k: (not full, f"method full trains every weight: no LoRA adapter, so no {k}")
               for k in LoraSettings.model_fields},
            **{k: (self.method == "qlora", f"{k} acts only with method qlora (4-bit base)")
               for k in ("bnb_double_quant", "bnb_quant_storage")},
        })
        return self


# DPO starts from the SFT policy: its adapter (PeftModel.from_pretrained reads the saved LoRA shape) and its
# tokenizer with the chat template. These keys would be read by nothing.
_FROM_SFT = {
    **{k: f"DPO continues the SFT adapter (its LoRA shape is fixed there); set {k} under sft"
       for k in LoraSettings.model_fields},
    "chat_template": "DPO uses the SFT policy's chat template (saved with its tokenizer); set chat_template under sft",
}


class DPOConfig(ModelSettings, TrainSettings):
    """Preference optimisation on top of an SFT (or a previous DPO) adapter."""

    learning_rate: float = 5e-6
    algorithm: Literal["dpo", "orpo", "simpo", "cpo"] = Field(
        "dpo", description="dpo (TRL DPOTrainer, any loss_type), or orpo / simpo / cpo")
    # validate_default: the default is a list too (cpo reads loss_type[0]; a bare "sigmoid" gave it "s")
    loss_type: list[str] | str = Field(
        "sigmoid", validate_default=True,
        description="dpo: TRL DPO loss(es): sigmoid, ipo, hinge, robust, ...; cpo: one CPO loss")
    loss_weights: list[float] | None = Field(None, description="dpo: a weight per loss_type")
    beta: float = 0.1
    label_smoothing: float = Field(0.0, description="dpo, simpo, cpo")
    simpo_gamma: float = Field(0.5, description="simpo (and cpo with loss_type simpo): the target reward margin")
    precompute_ref_log_probs: bool = Field(False, description="dpo: reference log-probs computed once up front")
    init_adapter: str | None = Field(
        None, description="Start from this adapter folder (e.g. a previous DPO output) instead of sft_dir's."
    )
    max_completion_length: int | None = Field(None, description="orpo, simpo, cpo: completion tokens kept")
    final_eval_max_pairs: int | None = Field(128, description="Train pairs scored after training (None = all).")
    fast: DPOFastConfig = Field(default_factory=DPOFastConfig, description="the GPU training fast path")

    @field_validator("loss_type")
    @classmethod
    def _as_list(cls, v):
        return [v] if isinstance(v, str) else v

    @model_validator(mode="wrap")
    @classmethod
    def _not_from_here(cls, data, handler):
        return _reject(data, handler, _FROM_SFT)

    @model_validator(mode="after")
    def _fields_act(self):
        algo = self.algorithm
        only = {"loss_type": ("dpo", "cpo"), "loss_weights": ("dpo",), "precompute_ref_log_probs": ("dpo",),
                "label_smoothing": ("dpo", "simpo", "cpo"), "simpo_gamma": ("simpo", "cpo"),
                "max_completion_length": ("orpo", "simpo", "cpo")}
        rules = {k: (algo in algos, f"acts only with algorithm {' or '.join(algos)} (algorithm is {algo})")
                 for k, algos in only.items()}
        rules["loss_type"] = (rules["loss_type"][0] and (algo == "dpo" or len(self.loss_type) == 1),
                              rules["loss_type"][1] if algo not in ("dpo", "cpo") else "cpo takes one loss_type")
        # the method follows the SFT run's unless set here: only an explicit non-qlora method makes these idle
        quantized = self.method == "qlora" or "method" not in self.model_fields_set
        rules.update({k: (quantized, f"{k} acts only with method qlora (4-bit base)")
                      for k in ("bnb_double_quant", "bnb_quant_storage")})
        _acts_only(self, rules)
        return self


class SampleConfig(Strict):
    """Sampling completions from a policy (RLAIF candidates, policy pairs, eval comparisons)."""

    num_completions: int = Field(2, ge=1, description="completions sampled per prompt")
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


class EvalConfig(Strict):
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

    @model_validator(mode="after")
    def _fields_that_act(self):
        _acts_only(self, {"general_split": (self.general_dir is not None,
                                            "the split of general_dir to read; it needs general_dir")})
        return self
