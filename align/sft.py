"""Supervised fine-tuning stage: QLoRA / LoRA / full fine-tune with TRL's SFTTrainer.

Trains on ``train.parquet`` only (minus any row also in ``test.parquet``), early-stops on a validation set
carved from train by lineage, checkpoints into ``work_dir`` and resumes from the last checkpoint when re-run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import datasets

from orchard.dataio import atomic_write_json
from orchard.errors import InputError
from orchard.schema import ModelRef

from . import data as D
from . import fast
from .callbacks import StopOnNaN, quiet_progress
from .config import SFTConfig
from .masking import assistant_masked_rows
from .modeling import device, load_base, load_tokenizer, lora_config, write_policy_info
from .plots import plot_curves
from .score import sft_loss
from .trainutil import (align_save_to_eval, keep_dtype_on_resume, last_checkpoint, print_summary, save_history,
                        summary_line, tensorboard_logdir, trainer_kwargs)


def sft_stage(data_dir: Path, out_dir: Path, work_dir: Path, config: SFTConfig, callbacks: list | None = None) -> dict:
    """Fine-tune ``config.base_model`` on ``data_dir``; write a policy folder into ``out_dir``; return metrics.

    ``callbacks``: extra transformers TrainerCallbacks (tests use one to simulate a crash or a divergence).
    """
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer
    from transformers import EarlyStoppingCallback

    data_dir, out_dir, work_dir = Path(data_dir), Path(out_dir), Path(work_dir)
    if not config.base_model:
        raise InputError("SFT needs `base_model` (a hub id or a local folder)", field="base_model")
    # a recipe run resolves run:<stage> before calling; standalone, such a reference is an error saying so
    base_model = ModelRef(config.base_model).resolve()
    t0 = time.perf_counter()
    c0 = time.process_time()  # CPU seconds: on a shared machine wall time says little

    rows = D.read_sft(data_dir, "train")
    test = D.read_sft(data_dir, "test", required=False)
    rows, n_overlap = D.drop_overlap(rows, test)
    if not rows:
        raise InputError("every train row also appears in test.parquet", path=data_dir / "train.parquet")
    train_rows, val_rows = D.lineage_split(rows, config.validation_fraction, config.seed)

    tok = load_tokenizer(base_model, config.chat_template, config.trust_remote_code)
    model = load_base(base_model, config)
    peft_cfg = None if config.method == "full" else lora_config(config)

    ckpt_dir = work_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    has_eval = bool(val_rows)
    kw = trainer_kwargs(config, ckpt_dir, has_eval, config.dtype)
    plan = fast.decide(config.fast)
    kw = fast.trainer_kwargs(kw, plan, model=model, tokens_per_example=config.max_length)
    early = has_eval and config.early_stopping_patience is not None
    if has_eval and (early or config.load_best_model_at_end):
        align_save_to_eval(kw)
        kw.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
    args = TRLSFTConfig(
        **kw,
        max_length=config.max_length,
        packing=config.packing,
        # Assistant-only loss is ours (align/masking.py): it works with any chat template, where TRL's needs
        # `{% generation %}` markers; TRL gets tokenized rows with an `assistant_masks` column and builds labels.
        assistant_only_loss=False,
        dataset_num_proc=None,
    )

    def to_ds(rs, split):
        if config.assistant_only_loss:
            return datasets.Dataset.from_list(assistant_masked_rows(tok, rs, str(data_dir / f"{split}.parquet")))
        return datasets.Dataset.from_list([{"messages": r["messages"]} for r in rs])

    nan_cb = StopOnNaN()
    cbs = [nan_cb] if config.stop_on_nan else []
    if early:
        cbs.append(EarlyStoppingCallback(config.early_stopping_patience, config.early_stopping_threshold))
    cbs += list(callbacks or [])
    # TRL creates the LoRA weights before Trainer seeds anything: seed here so runs (and ranks) are reproducible.
    from transformers import set_seed

    set_seed(config.seed)
    with tensorboard_logdir(out_dir / "tensorboard"):
        trainer = keep_dtype_on_resume(SFTTrainer)(
            model=model,
            args=args,
            train_dataset=to_ds(train_rows, "train"),
            eval_dataset=to_ds(val_rows, "train") if has_eval else None,
            processing_class=tok,
            peft_config=peft_cfg,
            callbacks=cbs,
        )
    quiet_progress(trainer)
    fast_applied = fast.apply(trainer, plan)
    resume = last_checkpoint(ckpt_dir) if config.resume else None
    model_out = trainer.train(resume_from_checkpoint=resume)
    save_history(out_dir, trainer.state.log_history)
    nan_cb.raise_if_failed()

    # Outputs: the (best) adapter or full model, the tokenizer with its chat template, and a policy card.
    sub = "model" if config.method == "full" else "adapter"
    trainer.save_model(str(out_dir / sub))
    # Outputs are safetensors only: drop the pickled TrainingArguments the trainer writes alongside.
    (out_dir / sub / "training_args.bin").unlink(missing_ok=True)
    tok.save_pretrained(str(out_dir / "tokenizer"))
    write_policy_info(out_dir, {
        "base_model": base_model,
        "method": config.method,
        "trust_remote_code": config.trust_remote_code,
        "chat_template": config.chat_template,
        "stage": "sft",
        "weights": sub,
    })

    m = trainer.model
    val = sft_loss(m, tok, val_rows, config.per_device_eval_batch_size, config.max_length) if val_rows else None
    tst = sft_loss(m, tok, test, config.per_device_eval_batch_size, config.max_length) if test else None
    m.train()  # leave the model as training expects it (bitsandbytes CPU trap)
    hist = trainer.state.log_history
    train_losses = [h["loss"] for h in hist if "loss" in h]
    eval_losses = [h["eval_loss"] for h in hist if "eval_loss" in h]
    metrics = {
        "stage": "sft",
        "method": config.method,
        "device": device(),
        "train_examples": len(train_rows),
        "validation_examples": len(val_rows),
        "test_examples": len(test or []),
        "dropped_overlap_with_test": n_overlap,
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "tokens": int(trainer.state.num_input_tokens_seen or 0),
        "resumed_from": Path(resume).name if resume else None,
        "train_loss": train_losses[-1] if train_losses else model_out.training_loss,
        "first_train_loss": train_losses[0] if train_losses else None,
        "train_loss_mean": model_out.training_loss,
        "first_eval_loss": eval_losses[0] if eval_losses else None,
        "best_eval_loss": trainer.state.best_metric,
        "eval_loss": val["loss"] if val else None,
        "eval_perplexity": val["perplexity"] if val else None,
        "test_loss": tst["loss"] if tst else None,
        "test_perplexity": tst["perplexity"] if tst else None,
        "stopped_early": bool(early and trainer.state.max_steps and trainer.state.global_step < trainer.state.max_steps),
        "train_runtime_s": model_out.metrics.get("train_runtime"),
        "time_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
        "fast_path": fast.finish(trainer, fast_applied),
    }
    if metrics["train_loss"] is not None and not math.isfinite(metrics["train_loss"]):
        metrics["train_loss"] = str(metrics["train_loss"])
    atomic_write_json(out_dir / "metrics.json", metrics)
    # The ids trained on, so anyone can check that no held-out row was used.
    atomic_write_json(out_dir / "train_ids.json", sorted(str(r.get("id")) for r in train_rows))
    plot_curves(hist, {"train": "loss", "validation": "eval_loss"}, out_dir / "loss.png", "SFT loss", "loss")
    print_summary(summary_line("SFT done", metrics, ["steps", "tokens", "train_loss", "eval_loss", "test_loss",
                                                     "test_perplexity", "time_s"]))
    return metrics
