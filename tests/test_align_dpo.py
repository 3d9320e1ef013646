"""align DPO on CPU with a tiny QLoRA policy: margins go up, reference = SFT adapter, variants, chaining, resume."""

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
from align_tiny import trained_sft  # noqa: E402
from orchard.align.config import DPOConfig
from orchard.align.dpo import dpo_stage
from orchard.dataio import write_split
from orchard.errors import InputError


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return trained_sft(tmp_path_factory.mktemp("align_dpo"))


def cfg(**kw) -> DPOConfig:
    base = dict(max_steps=20, learning_rate=5e-3, logging_steps=1, save_steps=10, per_device_train_batch_size=4,
                lr_scheduler_type="constant", warmup_steps=0, max_length=64, beta=0.1)
    base.update(kw)
    return DPOConfig(**base)


@pytest.fixture(scope="module")
def dpo_run(env):
    out = env["root"] / "dpo"
    return out, dpo_stage(env["root"] / "pairs", env["root"] / "sft", out, env["root"] / "work-dpo", cfg())


def test_dpo_raises_margins_against_the_sft_reference(env, dpo_run):
    out, m = dpo_run
    # The reference is the SFT policy: at the first step policy == reference, so the margin is ~0.
    assert abs(m["first_logged_margin"]) < 1e-3
    assert m["train_pairs_margin"] > 0.1 and m["train_pairs_accuracy"] >= 0.8, m
    assert m["test_margin"] is not None and m["test_accuracy"] is not None
    # No second model: the reference costs exactly one frozen copy of the LoRA adapter.
    assert m["reference"] == "frozen 'ref' adapter copy"
    assert m["reference_extra_params"] == m["policy_adapter_params"] > 0
    hist = json.loads((out / "log_history.json").read_text())
    margins = [h["rewards/margins"] for h in hist if "rewards/margins" in h]
    assert sum(margins[-5:]) / 5 > sum(margins[:5]) / 5 + 0.05
    assert (out / "margins.png").exists() and (out / "adapter" / "adapter_model.safetensors").exists()
    assert not (out / "adapter" / "ref").exists() and not list((out / "adapter").glob("*.bin"))
    assert json.loads((out / "policy.json").read_text())["stage"] == "dpo"


def test_next_round_starts_from_previous_dpo_policy(env, dpo_run, tmp_path):
    out, _ = dpo_run
    m = dpo_stage(env["root"] / "pairs", out, tmp_path / "o", tmp_path / "w", cfg(max_steps=2))
    assert m["init_from"] == str(out)
    # Reference = the previous round's policy (not the SFT one, against which the margin is already
    # well above 0.1): the first logged margin is ~0.
    assert abs(m["first_logged_margin"]) < 1e-3
    assert json.loads((tmp_path / "o" / "policy.json").read_text())["parent"] == str(out)
    # init_adapter pointing at an adapter folder works the same way.
    m2 = dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "o2", tmp_path / "w2",
                   cfg(max_steps=2, init_adapter=str(out / "adapter")))
    assert m2["init_from"] == str(out / "adapter")


@pytest.mark.parametrize("kw", [
    {"loss_type": "ipo"}, {"loss_type": "hinge"}, {"loss_type": "robust", "label_smoothing": 0.1},
    {"algorithm": "orpo"}, {"algorithm": "simpo"},
])
def test_loss_variants_train(env, tmp_path, kw):
    m = dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "o", tmp_path / "w",
                  cfg(max_steps=4, logging_steps=2, **kw))
    assert m["steps"] == 4 and m["train_loss"] == m["train_loss"]  # finite, not NaN
    assert (tmp_path / "o" / "adapter" / "adapter_model.safetensors").exists()


def test_precomputed_reference_log_probs(env, tmp_path):
    m = dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "o", tmp_path / "w",
                  cfg(max_steps=6, precompute_ref_log_probs=True))
    assert abs(m["first_logged_margin"]) < 1e-3
    assert m["last_logged_margin"] > m["first_logged_margin"]


class _Crash(Exception):
    pass


def test_dpo_resume_matches_uninterrupted(env, tmp_path):
    from safetensors.torch import load_file
    from transformers import TrainerCallback

    c = cfg(max_steps=8, save_steps=4, logging_steps=2)
    dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "a", tmp_path / "wa", c)

    class CrashAfter(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == 6:
                raise _Crash()

    with pytest.raises(_Crash):
        dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "b", tmp_path / "wb", c,
                  callbacks=[CrashAfter()])
    m = dpo_stage(env["root"] / "pairs", env["root"] / "sft", tmp_path / "b", tmp_path / "wb", c)
    assert m["resumed_from"] == "checkpoint-4"
    wa = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    wb = load_file(tmp_path / "b" / "adapter" / "adapter_model.safetensors")
    for k in wa:
        torch.testing.assert_close(wa[k].float(), wb[k].float(), rtol=1e-4, atol=1e-5, msg=k)


def test_bad_pairs_are_rejected_before_loading_a_model(env, tmp_path):
    write_split(tmp_path / "p", "train", [{"id": "1", "seed_id": "1", "prompt": [{"role": "user", "content": "q"}],
                                           "chosen": [{"role": "assistant", "content": "a"}], "provenance": "{}"}])
    with pytest.raises(InputError, match=r"train\.parquet:1 \[rejected\]"):
        dpo_stage(tmp_path / "p", env["root"] / "sft", tmp_path / "o", tmp_path / "w", cfg())
    with pytest.raises(InputError, match="policy.json"):
        dpo_stage(env["root"] / "pairs", tmp_path, tmp_path / "o", tmp_path / "w", cfg())
