"""Tiny teacher training: from scratch, loss goes down within a short budget, the folder reloads and generates."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from orchard.errors import InputError
from orchard.teacher_train import train_tiny_teacher

SEEDS = Path(__file__).resolve().parent.parent / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


def _examples(n: int = 120, seed: int = 0) -> list[dict]:
    """Seed tasks as instruction -> output chats and as 'new tasks' list prompts (synth's shape)."""
    tasks = [json.loads(line) for line in SEEDS.read_text().splitlines() if line.strip()]
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        if rng.random() < 0.5:
            t = rng.choice(tasks)
            inst = t["instances"][0]
            user = t["instruction"] + (f"\n\n{inst['input']}" if inst["input"] else "")
            out.append({"messages": [{"role": "user", "content": user},
                                     {"role": "assistant", "content": inst["output"]}]})
        else:
            ks = rng.sample(tasks, 6)
            lines = "\n".join(f"Task {i + 1}: {t['instruction']}" for i, t in enumerate(ks[:4]))
            user = f"Come up with 2 new tasks, different from these:\n{lines}\nWrite them one per line, starting at Task 5:"
            answer = "\n".join(f"Task {5 + i}: {t['instruction']}" for i, t in enumerate(ks[4:]))
            out.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
    return out


def test_teacher_trains_from_scratch_and_reloads(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logs = []
    m = train_tiny_teacher(tmp_path / "teacher", _examples(), seconds=10, seq_len=96, batch_size=8,
                           on_log=logs.append)
    assert m["steps"] >= 20 and 9 <= m["train_seconds"] <= 15
    assert m["initial_loss"] > 6.5  # ln(2000) ~ 7.6 at random init
    assert m["final_loss"] < m["initial_loss"] - 1.5, m["loss_curve"]
    assert logs and logs[0]["step"] == 1
    assert 0.55e6 < m["parameters"] < 0.7e6 and m["vocab_size"] <= 2000

    path = tmp_path / "teacher"
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.intermediate_size) == (128, 2, 4, 320)
    assert cfg.tie_word_embeddings and "{% generation %}" in tok.chat_template
    enc = tok.apply_chat_template([{"role": "user", "content": "Give me a task."}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > enc["input_ids"].shape[1]


def test_step_budget_is_deterministic_and_assistant_only(tmp_path):
    ex = _examples(40)
    a = train_tiny_teacher(tmp_path / "a", ex, seconds=None, max_steps=6, seq_len=64, batch_size=4, log_every=1)
    b = train_tiny_teacher(tmp_path / "b", ex, seconds=None, max_steps=6, seq_len=64, batch_size=4, log_every=1)
    assert a["steps"] == b["steps"] == 6
    assert [e["loss"] for e in a["loss_curve"]] == [e["loss"] for e in b["loss_curve"]]
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()
    c = train_tiny_teacher(tmp_path / "c", ex, seconds=None, max_steps=4, seq_len=64, batch_size=4,
                           assistant_only=True)
    assert c["steps"] == 4 and (tmp_path / "c" / "model.safetensors").exists()


def test_learns_next_token_exactly(tmp_path):
    """A memorised reply comes back verbatim under greedy decoding (catches label-shift mistakes)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ex = [{"messages": [{"role": "user", "content": "Say the magic words."},
                        {"role": "assistant", "content": "Task 4: open the green door."}]}] * 4
    train_tiny_teacher(tmp_path / "m", ex, seconds=None, max_steps=60, seq_len=24, batch_size=4, lr=1e-2)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    enc = tok.apply_chat_template(ex[0]["messages"][:1], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=12, do_sample=False)
    reply = tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
    assert reply == "Task 4: open the green door."


def test_bad_examples_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="no training examples"):
        train_tiny_teacher(tmp_path / "x", [], max_steps=1)
    with pytest.raises(InputError, match="messages"):
        train_tiny_teacher(tmp_path / "x", [{"prompt": "hi"}], max_steps=1)
    with pytest.raises(InputError, match="role"):
        train_tiny_teacher(tmp_path / "x", [{"messages": [{"role": "bot", "content": "hi"}]}], max_steps=1)
    with pytest.raises(InputError, match="seconds must be"):
        train_tiny_teacher(tmp_path / "x", _examples(2), seconds=0)
    with pytest.raises(InputError, match="no example has an assistant"):
        train_tiny_teacher(tmp_path / "x", [{"messages": [{"role": "user", "content": "hi"}]}], max_steps=1,
                           assistant_only=True)
    with pytest.raises(InputError, match="clock"):
        train_tiny_teacher(tmp_path / "x", _examples(2), max_steps=1, clock="sundial")
    with pytest.raises(InputError, match="never stops"):
        train_tiny_teacher(tmp_path / "x", _examples(2), seconds=None)
    assert not (tmp_path / "x").exists()
