"""Assistant-only loss on chat templates without `{% generation %}` markers (SmolLM2, Llama 3, ChatML, Zephyr)."""

from __future__ import annotations

import copy

import pytest

from orchard.align.masking import assistant_masked_rows, assistant_spans, tokenize_with_assistant_mask
from orchard.errors import InputError

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Zephyr-style: the EOS follows the content; the generation prompt is a plain role tag.
ZEPHYR = (
    "{% for message in messages %}{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CONV = [
    {"role": "system", "content": "You help with household budgets."},
    {"role": "user", "content": "How much should I save each month?"},
    {"role": "assistant", "content": "Aim for at least 10% of your take-home pay, more if you can."},
    {"role": "user", "content": "And for emergencies?"},
    {"role": "assistant", "content": "Keep three to six months of expenses in an easy-to-reach account."},
]


def _masked_text(tok, enc):
    return tok.decode([t for t, m in zip(enc["input_ids"], enc["assistant_masks"]) if m])


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.mark.parametrize("template", ["smollm2", "llama3", "chatml", "zephyr"])
def test_mask_is_exactly_the_assistant_turns_with_their_end_token(smol_tok, template):
    tok = copy.deepcopy(smol_tok)
    end = {"smollm2": "<|im_end|>", "llama3": "<|eot_id|>", "chatml": "<|im_end|>", "zephyr": tok.eos_token}[template]
    if template != "smollm2":
        tok.chat_template = {"llama3": LLAMA3, "chatml": CHATML, "zephyr": ZEPHYR}[template]
    if template == "llama3":  # as in a Llama 3 tokenizer, its header and turn markers are single tokens
        tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    assert "{% generation" not in tok.chat_template
    enc = tokenize_with_assistant_mask(tok, CONV)
    text = _masked_text(tok, enc)
    # exactly the two answers, each followed by its end-of-turn token, and nothing of the prompts
    assert text == CONV[2]["content"] + end + CONV[4]["content"] + end
    assert "save each month" not in text and "assistant" not in text
    # the mask is a token-exact view: the unmasked tokens decode to everything else
    assert tok.decode(enc["input_ids"]) == tok.apply_chat_template(CONV, tokenize=False)


def test_same_mask_as_generation_markers_where_the_template_has_them(tiny_model_dir):
    """On a template with {% generation %} markers, the rendered-span mask equals transformers' own."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert "{% generation %}" in tok.chat_template
    ref = tok.apply_chat_template(CONV, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ours = tokenize_with_assistant_mask(tok, CONV)
    assert ours["input_ids"] == list(ref["input_ids"])
    assert ours["assistant_masks"] == list(ref["assistant_masks"])


def test_fallback_when_the_template_rewrites_earlier_turns(smol_tok):
    """A template that renders earlier assistant turns differently (drops their reasoning) is still masked."""
    tok = copy.deepcopy(smol_tok)
    tok.chat_template = (
        "{% for message in messages %}{% set c = message['content'] %}"
        "{% if message['role'] == 'assistant' and not loop.last %}{% set c = c.split('</think>')[-1] %}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + c + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    conv = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "<think>x</think>Hello"},
            {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Goodbye now"}]
    full, spans = assistant_spans(tok, conv)
    assert [full[a:b] for a, b in spans] == ["Hello<|im_end|>", "Goodbye now<|im_end|>"]


def test_a_row_the_mask_cannot_cover_is_named(smol_tok):
    tok = copy.deepcopy(smol_tok)
    tok.chat_template = ("{% for message in messages %}{% if message['role'] != 'assistant' %}"
                         "{{ message['content'] + '\n' }}{% endif %}{% endfor %}")  # drops the answers entirely
    rows = [{"id": "abc123", "messages": CONV[1:3]}]
    with pytest.raises(InputError, match="abc123"):
        assistant_masked_rows(tok, rows, "data/train.parquet")
