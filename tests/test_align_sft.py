"""align SFT on CPU with a tiny Llama: 4-bit gradients, loss goes down, resume, NaN stop, no test leakage."""

from __future__ import annotations

import json
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from align_tiny import build_test_model, tiny_sft_rows  # noqa: E402
from orchard.align.callbacks import TrainingDiverged
from orchard.align.config import SFTConfig
from orchard.align.sft import sft_stage
from orchard.dataio import write_split
from orchard.errors import InputError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("align_sft")
    base = build_test_model(root / "base")
    rows = tiny_sft_rows()
    held = {rows[0]["seed_id"], rows[6]["seed_id"], rows[12]["seed_id"]}
    test = [r for r in rows if r["seed_id"] in held]
    train = [r for r in rows if r["seed_id"] not in held]
    write_split(root / "data", "train", train)
    write_split(root / "data", "test", test)
    return {"root": root, "base": str(base), "train": train, "test": test}


def cfg(env, **kw) -> SFTConfig:
    base = dict(base_model=env["base"], method="qlora", max_steps=24, learning_rate=3e-3, logging_steps=4,
                save_steps=8, per_device_train_batch_size=4, lr_scheduler_type="constant", warmup_steps=0,
                max_length=64, lora_r=8, lora_alpha=16, early_stopping_patience=None)
    base.update(kw)
    return SFTConfig(**base)


# ---------------------------------------------------------------- 4-bit gradients


def _lora_grads(model, batch):
    model.zero_grad()
    out = model(**batch, labels=batch["input_ids"])
    out.loss.backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}, out.loss.item()


def test_qlora_gradients_match_dequantized_reference(env):
    """LoRA gradients through NF4 weights equal those through the same weights dequantized to fp32,
    also after an eval-mode no-grad forward (bitsandbytes' CPU repacking trap, which align guards)."""
    import bitsandbytes.functional as F
    from peft import LoraConfig, get_peft_model

    from orchard.align.modeling import load_base

    lcfg = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    c = cfg(env)
    torch.manual_seed(0)
    q = get_peft_model(load_base(env["base"], c), lcfg)
    ref_base = load_base(env["base"], c, quantized=False)
    # Replace every linear weight of the reference with the NF4 weight dequantized: same function, fp32 path.
    qmods = dict(q.base_model.model.named_modules())
    for name, m in ref_base.named_modules():
        qm = qmods.get(name)
        if qm is not None and hasattr(qm, "weight") and hasattr(qm.weight, "quant_state"):
            w = F.dequantize_4bit(qm.weight.data, qm.weight.quant_state)
            m.weight.data.copy_(w.reshape(m.weight.shape))
    ref = get_peft_model(ref_base, lcfg)
    ref.load_state_dict({k: v for k, v in q.state_dict().items() if "lora_" in k}, strict=False)
    q.train(), ref.train()
    ids = torch.randint(3, 300, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}

    g_ref, l_ref = _lora_grads(ref, batch)
    g_q, l_q = _lora_grads(q, batch)
    assert abs(l_ref - l_q) < 1e-4
    assert set(g_ref) == set(g_q) and len(g_q) > 0
    for n in g_ref:
        torch.testing.assert_close(g_q[n], g_ref[n], rtol=1e-3, atol=1e-5, msg=n)

    # An evaluation forward between steps (what early stopping does) must not change the gradients.
    q.eval()
    with torch.no_grad():
        q(**batch)
    q.train()
    g_q2, _ = _lora_grads(q, batch)
    for n in g_ref:
        torch.testing.assert_close(g_q2[n], g_ref[n], rtol=1e-3, atol=1e-5, msg=n)


# ---------------------------------------------------------------- SFT behaviour


@pytest.fixture(scope="module")
def sft_run(env):
    out = env["root"] / "sft"
    m = sft_stage(env["root"] / "data", out, env["root"] / "work-sft", cfg(env))
    return out, m


def test_sft_lowers_validation_loss_and_writes_outputs(env, sft_run):
    out, m = sft_run
    assert m["steps"] == 24 and m["tokens"] > 0
    assert m["validation_examples"] > 0
    assert m["eval_loss"] < m["first_eval_loss"] - 0.1, m
    assert m["test_loss"] is not None and m["test_perplexity"] > 1
    for f in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "tokenizer/tokenizer.json",
              "metrics.json", "log_history.json", "loss.png", "policy.json"):
        assert (out / f).exists(), f
    assert not list((out / "adapter").glob("*.bin"))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["eval_loss"] == pytest.approx(m["eval_loss"])
    hist = json.loads((out / "log_history.json").read_text())
    assert any("eval_loss" in h for h in hist) and any("loss" in h for h in hist)
    # report_to "auto": TensorBoard is installed, so its event files land in the stage's own folder
    assert list((out / "tensorboard").rglob("events.out.tfevents.*"))


def test_heldout_split_is_never_trained_on(env, sft_run, tmp_path):
    out, m = sft_run
    trained = set(json.loads((out / "train_ids.json").read_text()))
    assert trained and not trained & {r["id"] for r in env["test"]}
    assert m["train_examples"] + m["validation_examples"] == len(env["train"])
    # A test row that leaked into train is dropped before training.
    write_split(tmp_path / "d", "train", env["train"] + [env["test"][0]])
    write_split(tmp_path / "d", "test", env["test"])
    m2 = sft_stage(tmp_path / "d", tmp_path / "o", tmp_path / "w", cfg(env, max_steps=2, save_steps=2))
    assert m2["dropped_overlap_with_test"] == 1
    assert env["test"][0]["id"] not in json.loads((tmp_path / "o" / "train_ids.json").read_text())


class _Crash(Exception):
    pass


def test_resume_after_kill_matches_uninterrupted_run(env, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    c = cfg(env, max_steps=12, save_steps=4, logging_steps=2, lora_dropout=0.05)
    ref = sft_stage(env["root"] / "data", tmp_path / "a", tmp_path / "wa", c)

    class CrashAfter(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 6:  # checkpoint-4 exists; steps 5-6 are lost, as in a kill
                raise _Crash()

    with pytest.raises(_Crash):
        sft_stage(env["root"] / "data", tmp_path / "b", tmp_path / "wb", c, callbacks=[CrashAfter()])
    assert (tmp_path / "wb" / "checkpoints" / "checkpoint-4").exists()
    res = sft_stage(env["root"] / "data", tmp_path / "b", tmp_path / "wb", c)
    assert res["resumed_from"] == "checkpoint-4"
    assert res["steps"] == ref["steps"] == 12
    wa = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
    assert res["eval_loss"] == pytest.approx(ref["eval_loss"], rel=1e-4)


def test_nan_loss_stops_with_clear_message(env, tmp_path):
    from transformers import TrainerCallback

    class Poison(TrainerCallback):
        """Simulate divergence: a LoRA weight becomes NaN after step 2."""

        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step == 2:
                with torch.no_grad():
                    next(p for n, p in model.named_parameters() if "lora_A" in n).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"diverged: .* at step \d+ .*Lower the learning rate"):
        sft_stage(env["root"] / "data", tmp_path / "o", tmp_path / "w",
                  cfg(env, max_steps=12, logging_steps=1), callbacks=[Poison()])
    assert not (tmp_path / "o" / "adapter").exists()


def test_early_stopping_on_validation_loss(env, tmp_path):
    # lr=0: the validation loss never improves, so patience 1 stops after the second evaluation.
    m = sft_stage(env["root"] / "data", tmp_path / "o", tmp_path / "w",
                  cfg(env, learning_rate=0.0, max_steps=40, logging_steps=2, save_steps=2,
                      early_stopping_patience=1))
    assert m["steps"] == 4 and m["stopped_early"]


def test_bad_input_names_file_row_and_field(env, tmp_path):
    write_split(tmp_path / "d", "train", [{"id": "1", "seed_id": "1", "messages": [
        {"role": "user", "content": "hi"}, {"role": "user", "content": "no answer"}], "provenance": "{}"}])
    with pytest.raises(InputError, match=r"train\.parquet:1 \[messages\]: the last message must be the assistant"):
        sft_stage(tmp_path / "d", tmp_path / "o", tmp_path / "w", cfg(env))
    with pytest.raises(InputError, match="base_model"):
        sft_stage(env["root"] / "data", tmp_path / "o", tmp_path / "w", cfg(env, base_model=None))
