"""Issue 7's GPU check: orchard's own SFT then DPO stage functions (QLoRA) on a random-weight Llama-3-8B-shaped
model, with a small synthetic dataset, a few dozen steps each. Shows that the 8B-class recipe fits and runs, and
reports step time, tokens/s and peak GPU memory for each stage.

    python3 benchmarks/stages_8b.py --out $OUT          # on the GPU machine, after train_speed.py's wheels
    .venv/bin/python benchmarks/stages_8b.py --size tiny --sft-steps 3 --dpo-steps 2 --out /tmp/st   # CPU smoke

The stages apply the fast path themselves (the ``fast:`` block of their configs, ``mode: auto`` by default: what a
recipe gets on such a GPU); ``--grad-accum 2`` lets it fold accumulation into larger micro batches, ``--fast-set
memory_budget=auto`` (repeatable) sets another switch of that block.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_speed as TS  # noqa: E402


def _words(rng, vocab, n):
    return " ".join(f"w{rng.randrange(3, vocab)}" for _ in range(n))


def write_data(root: Path, vocab: int, n_sft: int, n_pairs: int, maxlen: int) -> tuple[Path, Path]:
    from orchard.dataio import content_hash, write_split

    rng = random.Random(7)
    sft, pairs = root / "sft-data", root / "pairs-data"
    rows = []
    for _ in range(n_sft):
        msgs = [{"role": "user", "content": _words(rng, vocab, rng.randint(maxlen // 16, maxlen // 4))},
                {"role": "assistant", "content": _words(rng, vocab, rng.randint(maxlen // 8, maxlen // 2))}]
        i = content_hash(msgs)
        rows.append({"id": i, "seed_id": i, "messages": msgs, "provenance": json.dumps({"method": "synthetic"})})
    write_split(sft, "train", rows)
    prs = []
    for _ in range(n_pairs):
        prompt = [{"role": "user", "content": _words(rng, vocab, rng.randint(maxlen // 16, maxlen // 4))}]
        ch = [{"role": "assistant", "content": _words(rng, vocab, rng.randint(maxlen // 16, maxlen // 3))}]
        rj = [{"role": "assistant", "content": _words(rng, vocab, rng.randint(maxlen // 16, maxlen // 3))}]
        i = content_hash([prompt, ch, rj])
        prs.append({"id": i, "seed_id": i, "prompt": prompt, "chosen": ch, "rejected": rj,
                    "provenance": json.dumps({"method": "synthetic", "margin": 1.0})})
    write_split(pairs, "train", prs)
    return sft, pairs


class _Clock:
    def __new__(cls):
        import torch
        from transformers import TrainerCallback

        class CB(TrainerCallback):
            def __init__(self):
                self.t = []

            def on_step_end(self, args, state, control, **kw):
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                self.t.append(time.perf_counter())

        return CB()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="8b", choices=sorted(TS.SIZES))
    p.add_argument("--model-dir", default="/tmp/train-speed-models")
    p.add_argument("--out", required=True)
    p.add_argument("--sft-steps", type=int, default=30)
    p.add_argument("--dpo-steps", type=int, default=20)
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--maxlen", type=int, default=2048)
    p.add_argument("--fast", default="auto", choices=["auto", "on", "off"], help="fast path mode")
    p.add_argument("--fast-set", action="append", metavar="KEY=VALUE", help="another FastConfig switch")
    a = p.parse_args(argv)
    TS._orchard_importable()
    import torch

    from orchard.align import fast
    from orchard.align.api import DPOConfig, SFTConfig, dpo_stage, sft_stage
    from orchard.align.config import DPOFastConfig, FastConfig

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model_dir) / f"llama-{a.size}"
    made = TS.make_model(a.size, model)
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    sft_dir, pairs_dir = write_data(out / "data", vocab, 4 * a.grad_accum * a.sft_steps,
                                   2 * a.grad_accum * a.dpo_steps, a.maxlen)
    gpu = torch.cuda.is_available()
    sft_fast = {"mode": a.fast, **TS.fast_switches(a.fast_set, FastConfig)}
    dpo_fast = {"mode": a.fast, **TS.fast_switches(a.fast_set, DPOFastConfig)}
    plan = fast.decide(FastConfig(**sft_fast))
    common = dict(base_model=str(model), method="qlora" if gpu else "lora", max_length=a.maxlen,
                  gradient_checkpointing=True, logging_steps=5, save_steps=10_000, report_to="none",
                  gradient_accumulation_steps=a.grad_accum)
    report = {"gpu": torch.cuda.get_device_name(0) if gpu else "cpu", "date": time.strftime("%Y-%m-%d"),
              "model": made, "fast_path": plan.as_dict(), "stages": {}}
    stages = [
        ("sft", SFTConfig(**common, fast=sft_fast, lora_r=16, lora_alpha=16, max_steps=a.sft_steps,
                          per_device_train_batch_size=4, validation_fraction=0.0, early_stopping_patience=None,
                          load_best_model_at_end=False),
         lambda cfg, cbs: sft_stage(sft_dir, out / "sft", out / "work-sft", cfg, callbacks=cbs)),
        ("dpo", DPOConfig(**common, fast=dpo_fast, max_steps=a.dpo_steps, per_device_train_batch_size=2),
         lambda cfg, cbs: dpo_stage(pairs_dir, out / "sft", out / "dpo", out / "work-dpo", cfg, callbacks=cbs)),
    ]
    for name, cfg, run in stages:
        clock = _Clock()
        cbs = [clock]
        if gpu:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        m = run(cfg, cbs)
        wall = time.perf_counter() - t0
        st = clock.t[2:]  # first two steps are warm-up
        step_s = (st[-1] - st[0]) / (len(st) - 1) if len(st) > 1 else None
        toks = m.get("tokens") or 0
        report["stages"][name] = {
            "steps": m.get("steps"), "wall_s": round(wall, 1), "train_runtime_s": m.get("train_runtime_s"),
            "step_s_steady": round(step_s, 3) if step_s else None,
            "input_tokens": toks,
            "input_tokens_per_s": round(toks / m["train_runtime_s"], 1) if toks and m.get("train_runtime_s") else None,
            "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
            "train_loss": m.get("train_loss"), "first_train_loss": m.get("first_train_loss"),
            "fast_path": m.get("fast_path"),
        }
        print(f"STAGE {name} " + json.dumps(report["stages"][name]), flush=True)
    (out / "stages_8b.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
