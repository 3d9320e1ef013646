"""A tiny Llama + byte-level BPE tokenizer built locally, for tests and offline smoke runs (no hub).

Prefer ``orchard.models.build_tiny_model`` when the spine provides it; this is align's own fallback.
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}<|assistant|>\n"
    "{% generation %}{{ message['content'] }}<|end|>{% endgeneration %}\n"
    "{% else %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

SPECIALS = ["<|pad|>", "<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"]


def build_tiny(path: str | Path, texts: list[str], vocab_size: int = 400, hidden: int = 64, layers: int = 2,
               heads: int = 4, seed: int = 0) -> Path:
    """Train a BPE on ``texts`` and save a randomly initialised tiny Llama with it at ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|bos|>", eos_token="<|end|>",
                                  pad_token="<|pad|>")
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(str(path))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(str(path), safe_serialization=True)
    return path


_FACTS = [
    ("apple", "red"), ("banana", "yellow"), ("grass", "green"), ("sky", "blue"), ("snow", "white"),
    ("coal", "black"), ("orange", "orange"), ("plum", "purple"), ("lemon", "yellow"), ("cherry", "red"),
    ("leaf", "green"), ("ocean", "blue"), ("cloud", "white"), ("night", "black"), ("carrot", "orange"),
    ("grape", "purple"), ("tomato", "red"), ("lime", "green"), ("milk", "white"), ("ink", "black"),
]


def tiny_sft_rows(n_seeds: int = 20, per_seed: int = 2) -> list[dict]:
    """Rows in the contract's SFT format: simple colour facts, ``per_seed`` phrasings per seed."""
    from orchard.dataio import content_hash

    rows = []
    phr = ["What colour is {x}?", "Tell me the colour of {x}.", "Which colour does {x} have?"]
    for i, (x, c) in enumerate(_FACTS[:n_seeds]):
        seed_msgs = None
        for j in range(per_seed):
            msgs = [{"role": "user", "content": phr[j % len(phr)].format(x=x)},
                    {"role": "assistant", "content": f"The {x} is {c}."}]
            rid = content_hash(msgs)
            seed_msgs = seed_msgs or rid
            rows.append({"id": rid, "seed_id": seed_msgs, "messages": msgs,
                         "provenance": '{"method": "seed"}'})
    return rows


def tiny_corpus() -> list[str]:
    rows = tiny_sft_rows()
    text = [m["content"] for r in rows for m in r["messages"]]
    return text * 3 + ["The quick brown fox jumps over the lazy dog."] * 5


def tiny_pairs(rows: list[dict]) -> list[dict]:
    """Preference rows from SFT rows: chosen = the reference answer, rejected = a wrong colour."""
    from orchard.dataio import content_hash

    out = []
    for r in rows:
        ans = r["messages"][-1]["content"]
        colour = ans.rstrip(".").split()[-1]
        wrong = ans.replace(colour, "green" if colour != "green" else "blue")
        p = {"prompt": r["messages"][:-1], "chosen": [{"role": "assistant", "content": ans}],
             "rejected": [{"role": "assistant", "content": wrong}]}
        out.append({"id": content_hash(p), "seed_id": r["seed_id"], **p, "provenance": '{"margin": 1.0}'})
    return out


def build_test_model(path: str | Path) -> Path:
    """The spine's ``orchard.models.build_tiny_model`` when present, else :func:`build_tiny` (same recipe)."""
    try:
        from orchard.models import build_tiny_model
    except ImportError:
        return build_tiny(path, tiny_corpus())
    return build_tiny_model(path, corpus=tiny_corpus(), vocab_size=400)
