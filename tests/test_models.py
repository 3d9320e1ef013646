"""Tiny offline model: builds fast, reloads offline, chat template marks only assistant tokens."""

from __future__ import annotations

import time

import pytest

from orchard.errors import InputError
from orchard.models import build_tiny_model

MSGS = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a red fruit."},
    {"role": "assistant", "content": "An apple."},
    {"role": "user", "content": "Another one?"},
    {"role": "assistant", "content": "A cherry."},
]


def test_reload_offline_and_generate(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert (tiny_model_dir / "model.safetensors").exists()
    assert not list(tiny_model_dir.glob("*.bin"))
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == len(tok) == 1024
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    ids = tok.apply_chat_template(MSGS[:2], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > ids["input_ids"].shape[1]


def test_chat_template_markers_and_generation_prompt(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "{% generation %}" in tok.chat_template and "{% endgeneration %}" in tok.chat_template
    text = tok.apply_chat_template(MSGS[:2], tokenize=False, add_generation_prompt=True)
    assert text == "<s><|system|>\nAnswer briefly.</s>\n<|user|>\nName a red fruit.</s>\n<|assistant|>\n"
    no_prompt = tok.apply_chat_template(MSGS[:2], tokenize=False)
    assert not no_prompt.endswith("<|assistant|>\n")


def test_assistant_mask_covers_only_assistant_tokens(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tok.apply_chat_template(MSGS, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask) and 0 < sum(mask) < len(ids)
    marked = tok.decode([i for i, m in zip(ids, mask) if m])
    unmarked = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert marked == "An apple.</s>A cherry.</s>"
    assert "apple" not in unmarked and "cherry" not in unmarked and "red fruit" in unmarked


@pytest.mark.parametrize("text", ["Hello world, naïve café 😀", "  two  spaces\nand\ttabs ", "x" * 300])
def test_tokenizer_round_trips(tiny_model_dir, text):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert tok.unk_token_id not in ids  # byte-level: every character is representable


def test_deterministic_fast_and_options(tmp_path):
    t0 = time.perf_counter()
    a = build_tiny_model(tmp_path / "a", seed=3)
    elapsed = time.perf_counter() - t0
    b = build_tiny_model(tmp_path / "b", seed=3)
    c = build_tiny_model(tmp_path / "c", seed=4)
    assert elapsed < 2.0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()

    import json

    d = build_tiny_model(tmp_path / "d", hidden=32, layers=1, heads=2, intermediate=48, vocab_size=300,
                         max_position=64, corpus=["tiny corpus of words", "more words here"])
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (32, 1, 2)
    assert cfg["intermediate_size"] == 48 and cfg["max_position_embeddings"] == 64
    assert cfg["vocab_size"] <= 300


def test_bad_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError, match="vocab_size"):
        build_tiny_model(tmp_path / "x", vocab_size=100)
    with pytest.raises(InputError, match="divisible"):
        build_tiny_model(tmp_path / "y", hidden=30, heads=4)
    with pytest.raises(InputError, match="corpus"):
        build_tiny_model(tmp_path / "z", corpus=["", ""])
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
