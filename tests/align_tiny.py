"""Tiny data and models for align's tests: colour facts in the contract's formats, and a trained SFT fixture."""

from __future__ import annotations

from pathlib import Path

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
    """A tiny random Llama whose tokenizer is trained on the colour facts (orchard.models' recipe)."""
    from orchard.models import build_tiny_model

    return build_tiny_model(path, corpus=tiny_corpus(), vocab_size=400)


def trained_sft(root: Path, held_seeds: tuple[int, ...] = (0, 6), sft_work: str = "work-sft") -> dict:
    """Write data/ (train, test by seed) and pairs/, train a 16-step QLoRA SFT policy into sft/."""
    from orchard.align.config import SFTConfig
    from orchard.align.sft import sft_stage
    from orchard.dataio import write_split

    base = build_test_model(root / "base")
    rows = tiny_sft_rows()
    held = {rows[k]["seed_id"] for k in held_seeds}
    train = [r for r in rows if r["seed_id"] not in held]
    test = [r for r in rows if r["seed_id"] in held]
    write_split(root / "data", "train", train)
    write_split(root / "data", "test", test)
    sft_stage(root / "data", root / "sft", root / sft_work,
              SFTConfig(base_model=str(base), max_steps=16, learning_rate=3e-3, logging_steps=4, save_steps=8,
                        per_device_train_batch_size=4, lr_scheduler_type="constant", warmup_steps=0, max_length=64,
                        lora_r=8, lora_alpha=16, early_stopping_patience=None))
    write_split(root / "pairs", "train", tiny_pairs(train))
    write_split(root / "pairs", "test", tiny_pairs(test))
    return {"root": root, "base": str(base), "train": train, "test": test}
