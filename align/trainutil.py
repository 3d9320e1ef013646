"""Pieces shared by the SFT and DPO stages: trainer arguments, resume, run summaries."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import math
from pathlib import Path

import torch

from orchard.dataio import atomic_write_json

from .config import TrainSettings
from .modeling import resolve_dtype

log = logging.getLogger(__name__)


def resolve_report_to(value):
    """'auto' = TensorBoard where it is installed, else no tracker (the loss curves are plotted either way)."""
    if value == "auto":
        import importlib.util

        return "tensorboard" if importlib.util.find_spec("tensorboard") is not None else "none"
    return value


@contextlib.contextmanager
def tensorboard_logdir(path: Path):
    """Point transformers' TensorBoard callback (it reads the variable when the trainer is built) at ``path``."""
    old = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = old


def trainer_kwargs(config: TrainSettings, ckpt_dir: Path, has_eval: bool, dtype_name: str) -> dict:
    """Keyword arguments for a TRL config (SFTConfig/DPOConfig share TrainingArguments)."""
    dtype = resolve_dtype(dtype_name)
    on_gpu = torch.cuda.is_available()
    eval_steps = config.eval_steps or config.logging_steps
    save_steps = config.save_steps
    kw = dict(
        output_dir=str(ckpt_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        per_device_eval_batch_size=config.per_device_eval_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        lr_scheduler_type=config.lr_scheduler_type,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim=config.optim,
        logging_steps=config.logging_steps,
        logging_first_step=True,
        # Our StopOnNaN callback must see NaNs; the default filter would hide them.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=save_steps,
        save_total_limit=config.save_total_limit,
        seed=config.seed,
        data_seed=config.seed,
        gradient_checkpointing=config.gradient_checkpointing,
        report_to=resolve_report_to(config.report_to),
        use_liger_kernel=config.use_liger_kernel,
        dataloader_num_workers=config.dataloader_num_workers,
        bf16=dtype == torch.bfloat16,
        fp16=on_gpu and dtype == torch.float16,
        use_cpu=not on_gpu,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=eval_steps if has_eval else None,
        include_num_input_tokens_seen=True,
        disable_tqdm=False,
    )
    if config.gradient_checkpointing:
        kw["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    return kw


def align_save_to_eval(kw: dict) -> None:
    """load_best_model_at_end needs checkpoints on evaluation steps: round save_steps up to a multiple."""
    ev = kw["eval_steps"]
    kw["save_steps"] = ev * math.ceil(kw["save_steps"] / ev)


def last_checkpoint(ckpt_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    if not ckpt_dir.is_dir():
        return None
    return get_last_checkpoint(str(ckpt_dir))


def save_history(out_dir: Path, history: list[dict]) -> None:
    clean = [{k: (v if not isinstance(v, float) or math.isfinite(v) else str(v)) for k, v in h.items()}
             for h in history]
    atomic_write_json(out_dir / "log_history.json", clean)


def summary_line(title: str, metrics: dict, keys: list[str]) -> str:
    parts = []
    for k in keys:
        v = metrics.get(k)
        if v is None:
            continue
        parts.append(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}")
    return f"{title}: " + ", ".join(parts)


def print_summary(line: str) -> None:
    try:
        from rich.console import Console

        Console(stderr=True).print(f"[bold green]{line}[/]")
    except Exception:  # rich is a dependency, but a summary must never fail a run
        print(line)


def dump(obj) -> str:
    return json.dumps(obj, indent=2, default=str)


def keep_dtype_on_resume(trainer_cls):
    """A subclass of ``trainer_cls`` whose resume copies adapter weights into the existing parameters.

    TRL keeps QLoRA adapters in bf16, but the stock resume path re-loads the adapter with PEFT's fp32
    autocast, so a resumed run trains in a different precision from an uninterrupted one (measured: adapter
    weights off by ~2% after 6 more steps). Copying the saved tensors in place keeps dtype and results equal.
    """

    class _Resumable(trainer_cls):
        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from peft import PeftModel, set_peft_model_state_dict
            from safetensors.torch import load_file

            m = model if model is not None else self.model
            f = Path(resume_from_checkpoint) / "adapter_model.safetensors"
            if isinstance(m, PeftModel) and f.exists():
                res = set_peft_model_state_dict(m, load_file(str(f)), adapter_name="default")
                missing = [k for k in res.missing_keys if "lora_" in k and ".default." in k]
                if missing:
                    raise RuntimeError(f"checkpoint {f} lacks adapter weights: {missing[:3]}")
                return
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    _Resumable.__name__ = trainer_cls.__name__
    return _Resumable
