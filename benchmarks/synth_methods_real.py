"""Magpie against Self-Instruct on a real small teacher (SmolLM2-135M-Instruct served by `transformers serve`).

Usage: .venv/bin/python benchmarks/synth_methods_real.py [--num 30] [--seeds data/seeds/household_finance.jsonl]
       [--model models/smollm2-135m-instruct] [--out synth_methods_real.json]

Both methods get the same seeds, the same served teacher and the same filters, and are asked for --num pairs.
Per method it prints and writes: pairs written, items tried, share kept, the share of rejections that were
degenerate text, the share of written pairs that read as English (80% or more of a row's words in the system's
English word list, /usr/share/dict/words, a list the filters do not use), the share of pairs whose answer the
same model, asked yes/no, calls helpful and correct (a weak judge: read it as a hint, not a score), and seconds.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from pathlib import Path

from orchard.dataio import read_rows
from orchard.serve import TeacherServer
from orchard.synth.api import instructions_stage, seeds_stage
from orchard.synth.methods_config import SynthConfig
from orchard.synth.teacher import ChatRequest, Teacher, TeacherConfig

WORDS = Path("/usr/share/dict/words")
JUDGE = ("Question: {q}\n\nAnswer: {a}\n\nIs this answer helpful, correct and on topic? Reply with one word, "
         "Yes or No.")


def english_share(rows: list[dict]) -> float | None:
    if not WORDS.exists() or not rows:
        return None
    vocab = {w.strip().lower() for w in WORDS.read_text(encoding="utf-8", errors="ignore").splitlines()}
    ok = 0
    for r in rows:
        words = [w.lower() for w in re.findall(r"[A-Za-z']+", " ".join(m["content"] for m in r["messages"]))]
        words = [w.strip("'") for w in words if w.strip("'")]
        if words and sum(w in vocab or w.rstrip("s") in vocab for w in words) / len(words) >= 0.8:
            ok += 1
    return ok / len(rows)


def yes_share(teacher: Teacher, rows: list[dict]) -> float | None:
    if not rows:
        return None
    reqs = [ChatRequest(messages=[{"role": "user", "content": JUDGE.format(q=r["messages"][0]["content"],
                                                                          a=r["messages"][-1]["content"])}],
                        params={"temperature": 0.0, "max_tokens": 3}, seed=0, tag=f"yes:{i}")
            for i, r in enumerate(rows)]
    res = teacher.chat_many(reqs, progress=False)
    return sum(bool(x.ok and x.text.strip().lower().startswith("yes")) for x in res) / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num", type=int, default=30)
    ap.add_argument("--seeds", default="data/seeds/household_finance.jsonl")
    ap.add_argument("--model", default="models/smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="synth_methods_real.json")
    args = ap.parse_args()
    configs = {
        "self_instruct": SynthConfig(method="self_instruct", num=args.num, min_num=0, self_instruct={
            "num_prompt_instructions": 4, "num_machine_instructions": 1, "tasks_per_prompt": 3, "max_tokens": 192,
            "response_max_tokens": 160, "max_rounds": 6},
            filters={"on_topic": {"enabled": True, "min_similarity": 0.35}}),
        "magpie": SynthConfig(method="magpie", num=args.num, min_num=0, magpie={
            "domain": "household finance: budgets, saving, debt, bills and everyday money arithmetic",
            "temperature": 0.6, "response_max_tokens": 160, "attempts_per_pair": 5,
            "response_system_prompt": "You are a helpful assistant. Answer briefly, in at most four sentences."},
            filters={"on_topic": {"enabled": True, "min_similarity": 0.35}}),
    }
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp, TeacherServer(args.model, threads=args.threads) as srv:
        tmp = Path(tmp)
        seeds_stage(args.seeds, tmp / "seeds", tmp / "w", None)
        tcfg = TeacherConfig(base_url=srv.base_url, model=srv.model, max_concurrency=8, max_tokens=256,
                             temperature=0.7, timeout_s=300)
        for name, cfg in configs.items():
            t0 = time.perf_counter()
            man = instructions_stage(tmp / "seeds", tmp / name, tmp / f"w-{name}", cfg, tcfg)
            secs = time.perf_counter() - t0
            rows = read_rows(tmp / name)
            rej = man["rejection_reasons"]
            n_rej = sum(rej.values())
            with Teacher(tcfg, tmp / "judge.sqlite") as judge:
                yes = yes_share(judge, rows)
            tried = man.get("attempts", {}).get("items_tried", man["counts"]["generated"])
            rows_out.append({
                "method": name, "asked": args.num, "written": len(rows), "items_generated": man["counts"]["generated"],
                "items_tried": tried, "share_kept": round(len(rows) / max(1, man["counts"]["generated"]), 3),
                "degenerate_share_of_rejected": round(sum(v for k, v in rej.items() if "degenerate" in k)
                                                      / max(1, n_rej), 3),
                "rejection_reasons": rej, "english_share": english_share(rows), "judge_yes_share": yes,
                "seconds": round(secs, 1), "teacher_calls": man.get("teacher_usage", {}).get("calls"),
                "examples": [r["messages"][0]["content"][:160] for r in rows[:5]]})
    print(f"{'method':<14} {'asked':>5} {'written':>7} {'generated':>9} {'kept':>6} {'degen.':>6} {'English':>7} "
          f"{'judge yes':>9} {'s':>6}")
    for r in rows_out:
        print(f"{r['method']:<14} {r['asked']:>5} {r['written']:>7} {r['items_generated']:>9} {r['share_kept']:>6.2f} "
              f"{r['degenerate_share_of_rejected']:>6.2f} {r['english_share'] or 0:>7.2f} "
              f"{r['judge_yes_share'] or 0:>9.2f} {r['seconds']:>6.0f}")
    out = Path(__file__).resolve().parent / "results" / args.out
    out.write_text(json.dumps({"model": args.model, "seeds": args.seeds, "rows": rows_out}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
