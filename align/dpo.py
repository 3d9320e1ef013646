"""Preference optimisation stage: DPO (any TRL loss) on top of an SFT adapter; ORPO/SimPO/CPO from trl.experimental.

Reference model = the SFT policy without a second copy of the base: TRL 1.16, given a PEFT model and no
``peft_config``, adds a frozen "ref" adapter copied from the trainable one, so the reference costs one extra
LoRA adapter, not a second model. ``precompute_ref_log_probs`` computes reference log-probs once up front.
Starting from a previous DPO output (``init_adapter`` or ``sft_dir`` pointing at one) iterates RLAIF rounds.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import datasets

from orchard.dataio import atomic_write_json
from orchard.errors import InputError
from orchard.schema import ModelRef

from . import data as D
from . import fast
from .callbacks import StopOnNaN, quiet_progress
from .config import DPOConfig
from .modeling import (adapter_path, device, load_trainable_policy, policy_tokenizer, read_policy_info,
                       write_policy_info)
from .plots import plot_curves
from .trainutil import (keep_dtype_on_resume, last_checkpoint, print_summary, save_history, summary_line,
                        tensorboard_logdir, trainer_kwargs)


def _pairs_ds(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(
        [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    )


def _trainer(config: DPOConfig, kw: dict, model, tok, train_ds, eval_ds, callbacks):
    """Build the trainer for ``config.algorithm`` (DPO is first-class; the others are TRL experimental)."""
    common = dict(model=model, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tok,
                  callbacks=callbacks)
    if config.algorithm == "dpo":
        from trl import DPOConfig as TRLDPOConfig
        from trl import DPOTrainer

        args = TRLDPOConfig(**kw, beta=config.beta, loss_type=config.loss_type, loss_weights=config.loss_weights,
                            label_smoothing=config.label_smoothing, max_length=config.max_length,
                            precompute_ref_log_probs=config.precompute_ref_log_probs)
        return keep_dtype_on_resume(DPOTrainer)(args=args, **common)
    if config.algorithm == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**kw, beta=config.beta, max_length=config.max_length,
                          max_completion_length=config.max_completion_length)
        return keep_dtype_on_resume(ORPOTrainer)(args=args, **common)
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    extra = {"loss_type": "simpo", "cpo_alpha": 0.0} if config.algorithm == "simpo" else {
        "loss_type": config.loss_type[0]}
    args = CPOConfig(**kw, beta=config.beta, max_length=config.max_length, simpo_gamma=config.simpo_gamma,
                     max_completion_length=config.max_completion_length, label_smoothing=config.label_smoothing,
                     **extra)
    return keep_dtype_on_resume(CPOTrainer)(args=args, **common)


def _prepare_eval(trainer, ds, tok, algorithm: str):
    """ORPO/CPO tokenize only the datasets given at init; tokenize later eval sets the same way."""
    if algorithm == "dpo":
        return ds  # DPOTrainer.evaluate prepares raw datasets itself
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt

    ds = ds.map(maybe_extract_prompt)
    ds = ds.map(maybe_apply_chat_template, fn_kwargs={"processing_class": tok})
    return ds.map(trainer.tokenize_row)


def _pick(metrics: dict, suffix: str):
    for k, v in metrics.items():
        if k.endswith(suffix):
            return v
    return None


def dpo_stage(pairs_dir: Path, sft_dir: Path, out_dir: Path, work_dir: Path, config: DPOConfig,
              callbacks: list | None = None) -> dict:
    """Train the policy in ``sft_dir`` (or ``config.init_adapter``) on preference pairs; write a policy folder."""
    pairs_dir, sft_dir, out_dir, work_dir = Path(pairs_dir), Path(sft_dir), Path(out_dir), Path(work_dir)
    t0 = time.perf_counter()
    c0 = time.process_time()  # CPU seconds: on a shared machine wall time says little
    train = D.read_pairs(pairs_dir, "train")
    test = D.read_pairs(pairs_dir, "test", required=False)
    info = read_policy_info(sft_dir)
    base = ModelRef(config.base_model).resolve() if config.base_model else info["base_model"]
    init_dir = Path(config.init_adapter) if config.init_adapter else sft_dir
    if adapter_path(init_dir) is None and not (init_dir / "model").exists():
        raise InputError("no adapter to start from", path=init_dir, field="init_adapter")
    # Follow the SFT run's loading choices unless the recipe says otherwise.
    settings = config
    if "method" not in config.model_fields_set or "trust_remote_code" not in config.model_fields_set:
        upd = {}
        if "method" not in config.model_fields_set:
            upd["method"] = info.get("method", config.method)
        if "trust_remote_code" not in config.model_fields_set:
            upd["trust_remote_code"] = info.get("trust_remote_code", False)
        settings = config.model_copy(update=upd)
    tok = policy_tokenizer(sft_dir, info)
    model = load_trainable_policy(init_dir, settings, base)

    ckpt_dir = work_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    has_eval = bool(test) and config.eval_steps is not None
    kw = trainer_kwargs(config, ckpt_dir, has_eval, settings.dtype)
    plan = fast.decide(config.fast)
    kw = fast.trainer_kwargs(kw, plan, model=model, tokens_per_example=2 * config.max_length)
    nan_cb = StopOnNaN()
    cbs = ([nan_cb] if config.stop_on_nan else []) + list(callbacks or [])
    # Final margins on (at most final_eval_max_pairs of) the train pairs: enough to see them rise, cheap on CPU.
    eval_sets = {"train_pairs": _pairs_ds(train[: config.final_eval_max_pairs or None])}
    if test:
        eval_sets["test"] = _pairs_ds(test)
    if config.algorithm != "dpo":
        eval_arg = eval_sets["test"] if has_eval else None  # the experimental trainers take one eval set
    else:
        # DPO gets its eval sets at init even when it does not evaluate during training: with precomputed
        # reference log-probs on a full fine-tune the reference only exists before the first step.
        eval_arg = eval_sets
    with tensorboard_logdir(out_dir / "tensorboard"):
        trainer = _trainer(config, kw, model, tok, _pairs_ds(train), eval_arg, cbs)
    quiet_progress(trainer)
    fast_applied = fast.apply(trainer, plan)
    prepared = dict(trainer.eval_dataset) if isinstance(trainer.eval_dataset, dict) else {}
    if prepared:
        # Evaluate only the held-out pairs during training; the train pairs are scored once at the end.
        trainer.eval_dataset = {"test": prepared["test"]} if has_eval else None

    peft_cfg = getattr(trainer.model, "peft_config", {}) or {}
    ref_params = sum(p.numel() for n, p in trainer.model.named_parameters() if ".ref." in n)
    adapter_params = sum(p.numel() for n, p in trainer.model.named_parameters() if ".default." in n)

    resume = last_checkpoint(ckpt_dir) if config.resume else None
    out = trainer.train(resume_from_checkpoint=resume)
    save_history(out_dir, trainer.state.log_history)
    nan_cb.raise_if_failed()

    # Margins/accuracies on the train pairs and the held-out pairs, measured after training.
    final = {}
    if prepared:
        trainer.eval_dataset = prepared
    for name, ds in eval_sets.items():
        target = name if config.algorithm == "dpo" else _prepare_eval(trainer, ds, tok, config.algorithm)
        m = trainer.evaluate(eval_dataset=target, metric_key_prefix=name)
        final[name] = {
            "loss": m.get(f"{name}_loss"),
            "margin": _pick(m, "rewards/margins"),
            "accuracy": _pick(m, "rewards/accuracies"),
            "chosen_reward": _pick(m, "rewards/chosen"),
            "rejected_reward": _pick(m, "rewards/rejected"),
        }
    trainer.model.train()

    trainer.save_model(str(out_dir / "adapter"))
    # Outputs are safetensors only: drop the pickled TrainingArguments the trainer writes alongside.
    (out_dir / "adapter" / "training_args.bin").unlink(missing_ok=True)
    # The frozen reference adapter is a training detail; the output is the trained policy only.
    shutil.rmtree(out_dir / "adapter" / "ref", ignore_errors=True)
    tok.save_pretrained(str(out_dir / "tokenizer"))
    write_policy_info(out_dir, {
        "base_model": base, "method": settings.method, "trust_remote_code": settings.trust_remote_code,
        "chat_template": info.get("chat_template"), "stage": config.algorithm, "weights": "adapter",
        "parent": str(init_dir),
    })
    hist = trainer.state.log_history
    train_margins = [h["rewards/margins"] for h in hist if "rewards/margins" in h]
    metrics = {
        "stage": "dpo",
        "algorithm": config.algorithm,
        "loss_type": config.loss_type if config.algorithm == "dpo" else None,
        "device": device(),
        "train_pairs": len(train),
        "test_pairs": len(test or []),
        "steps": trainer.state.global_step,
        "tokens": int(trainer.state.num_input_tokens_seen or 0),
        "resumed_from": Path(resume).name if resume else None,
        "init_from": str(init_dir),
        "fast_path": fast.finish(trainer, fast_applied),
        "reference": ("frozen 'ref' adapter copy" if "ref" in peft_cfg else
                      "precomputed log-probs" if config.precompute_ref_log_probs else
                      "none (reference-free)" if config.algorithm != "dpo" else "adapter-disabled base"),
        "reference_extra_params": ref_params,
        "policy_adapter_params": adapter_params,
        "train_loss": out.training_loss,
        "first_logged_margin": train_margins[0] if train_margins else None,
        "last_logged_margin": train_margins[-1] if train_margins else None,
        "train_pairs_margin": final["train_pairs"]["margin"],
        "train_pairs_accuracy": final["train_pairs"]["accuracy"],
        "test_margin": final.get("test", {}).get("margin"),
        "test_accuracy": final.get("test", {}).get("accuracy"),
        "final_eval": final,
        "train_runtime_s": out.metrics.get("train_runtime"),
        "time_s": round(time.perf_counter() - t0, 2),
        "cpu_s": round(time.process_time() - c0, 2),
    }
    atomic_write_json(out_dir / "metrics.json", metrics)
    plot_curves(hist, {"train margin": "rewards/margins", "held-out margin": "eval_rewards/margins"},
                out_dir / "margins.png", f"{config.algorithm.upper()} reward margins", "chosen - rejected reward")
    plot_curves(hist, {"train": "loss", "held-out": "eval_loss"}, out_dir / "loss.png",
                f"{config.algorithm.upper()} loss", "loss")
    print_summary(summary_line(f"{config.algorithm.upper()} done", metrics,
                               ["steps", "train_loss", "train_pairs_margin", "train_pairs_accuracy", "test_margin",
                                "test_accuracy", "time_s"]))
    return metrics
