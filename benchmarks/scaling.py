"""Issue 9: orchard's SFT and DPO stages on several GPUs under accelerate (DDP; FSDP with QLoRA) against one GPU
in the same session: useful tokens/s (SFT), pairs/s (DPO), peak memory of a GPU, scaling efficiency.

    python3 benchmarks/scaling.py --out $OUT                    # a machine with N GPUs (all visible ones)
    .venv/bin/python benchmarks/scaling.py --cpu --size tiny --out /tmp/sc   # CPU smoke: 2 gloo processes

Every run is the CLI a user types (``orchard align sft|dpo ... --accelerate recipes/accelerate/X.yaml``), on the
random-weight model of ``train_speed.py`` and the synthetic conversations of ``stages_8b.py``. Weak scaling: the
per-device batch stays the same, so N processes take N times the examples per optimizer step; efficiency is the
N-process throughput over N times the one-process throughput. Every DPO run starts from the one-process SFT
adapter, so the DPO rows differ only in their layout. Throughput is over the whole ``train_runtime`` (warm-up
steps included, equally in every row).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import stages_8b as S8  # noqa: E402
import train_speed as TS  # noqa: E402

ACC = ROOT / "recipes" / "accelerate"


def layouts(n_gpus: int, configs: list[str], cpu: bool) -> list[tuple[str, Path | None, int]]:
    """(name, accelerate config or None for a plain single process, processes)."""
    if cpu:
        return [("1 process", None, 1), ("cpu_ddp x2", ACC / "cpu_ddp.yaml", 2)]
    rows = [("1 GPU", ACC / "single_gpu.yaml", 1)]
    return rows + [(f"{c} x{n_gpus}", ACC / f"{c}.yaml", n_gpus) for c in configs if n_gpus > 1]


def stage_config(a, stage: str, fsdp: bool, cpu: bool) -> dict:
    cfg = dict(base_model=str(a.model_path), method="qlora", max_length=a.maxlen, gradient_checkpointing=True,
               logging_steps=1, save_steps=100_000, report_to="none",
               fast={"mode": "auto"}, max_steps=a.sft_steps if stage == "sft" else a.dpo_steps,
               per_device_train_batch_size=a.sft_bs if stage == "sft" else a.dpo_bs)
    if stage == "sft":  # the LoRA is SFT's; DPO continues it
        cfg.update(validation_fraction=0.0, early_stopping_patience=None, load_best_model_at_end=False,
                   lora_r=16, lora_alpha=16)
    if fsdp:
        # FSDP flattens parameters of one dtype: the 4-bit bytes stored as bf16 (recipes/accelerate/fsdp_qlora.yaml)
        cfg.update(bnb_quant_storage="bfloat16", dtype="bfloat16")
    if cpu and stage == "sft":
        cfg.update(lora_dropout=0.0)
    return cfg


def run_stage(a, stage: str, name: str, acc: Path | None, n: int, data: Path, out: Path, sft_dir: Path | None,
              env: dict) -> dict:
    cfg_path = out.parent / f"{out.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(stage_config(a, stage, acc is not None and "fsdp" in acc.name, a.cpu)))
    cli = [sys.executable, "-m", "orchard.align.cli", stage, str(data), "--out", str(out), "--config", str(cfg_path)]
    if stage == "dpo":
        cli += ["--sft", str(sft_dir)]
    if acc is not None:
        if acc.name == "cpu_ddp.yaml":  # parallel runs must not share a rendezvous port
            c = yaml.safe_load(acc.read_text())
            c["main_process_port"] = 29000 + (os.getpid() + n) % 1000
            acc = out.parent / f"{out.name}-accelerate.yaml"
            acc.write_text(yaml.safe_dump(c))
        cli += ["--accelerate", str(acc), "--num-processes", str(n)]
    t0 = time.perf_counter()
    r = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=a.timeout)
    wall = time.perf_counter() - t0
    row = {"stage": stage, "layout": name, "processes": n, "accelerate": acc.name if acc else None,
           "wall_s": round(wall, 1)}
    if r.returncode != 0 or not (out / "metrics.json").exists():
        row["error"] = (r.stderr or r.stdout)[-2000:]
        print(f"FAILED {stage} {name}:\n{row['error']}", flush=True)
        return row
    m = json.loads((out / "metrics.json").read_text())
    rt = m.get("train_runtime_s") or 0
    row.update(steps=m.get("steps"), train_runtime_s=rt, tokens=m.get("tokens"),
               peak_gib=(m.get("fast_path") or {}).get("peak_gib_since_train_begin"),
               fast_path={k: v for k, v in (m.get("fast_path") or {}).items()
                          if k in ("fast_path", "reason", "fused_decoder_layers", "notes")})
    if rt:
        row["tokens_per_s"] = round((m.get("tokens") or 0) / rt, 1)
        bs = a.sft_bs if stage == "sft" else a.dpo_bs
        row["examples_per_s"] = round((m.get("steps") or 0) * bs * n / rt, 3)
    print(f"RESULT {json.dumps(row)}", flush=True)
    return row


def efficiency(rows: list[dict]) -> None:
    """Scaling efficiency of each row against its stage's one-process row (in place)."""
    for stage in ("sft", "dpo"):
        base = next((r for r in rows if r["stage"] == stage and r["processes"] == 1 and "error" not in r), None)
        for r in rows:
            if r["stage"] != stage or "error" in r or base is None or not base.get("examples_per_s"):
                continue
            r["speedup"] = round(r["examples_per_s"] / base["examples_per_s"], 3)
            r["scaling_efficiency"] = round(r["speedup"] / r["processes"], 3)


def print_table(rep: dict) -> None:
    cols = ["stage", "layout", "steps", "examples/s", "tokens/s", "peak GiB (a GPU)", "speedup", "efficiency"]
    rows = []
    for r in rep["rows"]:
        if "error" in r:
            rows.append([r["stage"], r["layout"], "ERROR " + r["error"].strip().splitlines()[-1][:70], "", "", "",
                         "", ""])
            continue
        rows.append([r["stage"], r["layout"], str(r.get("steps")), f"{r.get('examples_per_s', 0):.2f}",
                     f"{r.get('tokens_per_s', 0):,.0f}", "" if r.get("peak_gib") is None else f"{r['peak_gib']:.1f}",
                     f"{r.get('speedup', 0):.2f}x", f"{100 * r.get('scaling_efficiency', 0):.0f}%"])
    w = [max(len(c), *(len(x[i]) for x in rows)) for i, c in enumerate(cols)]
    print(f"\n{rep['device']}  {rep['date']}  model {rep['size']}")
    print("  ".join(c.ljust(w[i]) for i, c in enumerate(cols)))
    for x in rows:
        print("  ".join(v.ljust(w[i]) for i, v in enumerate(x)))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--size", default="8b", choices=sorted(TS.SIZES))
    p.add_argument("--model-dir", default="/tmp/train-speed-models")
    p.add_argument("--configs", default="ddp,fsdp_qlora", help="recipes/accelerate configs run on all GPUs")
    p.add_argument("--gpus", type=int, default=None, help="default: every visible GPU")
    p.add_argument("--sft-steps", type=int, default=20)
    p.add_argument("--dpo-steps", type=int, default=20)
    p.add_argument("--sft-bs", type=int, default=4)
    p.add_argument("--dpo-bs", type=int, default=2)
    p.add_argument("--maxlen", type=int, default=2048)
    p.add_argument("--cpu", action="store_true", help="2 gloo processes against 1 (a smoke test of the harness)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per stage run")
    p.add_argument("--results-dir", default=str(TS.RESULTS))
    a = p.parse_args(argv)
    TS._orchard_importable()
    import torch

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    a.model_path = Path(a.model_dir) / f"llama-{a.size}"
    TS.make_model(a.size, a.model_path)
    n_gpus = 0 if a.cpu else (a.gpus or torch.cuda.device_count())
    plan = layouts(n_gpus, [c for c in a.configs.split(",") if c], a.cpu)
    most = max(n for _, _, n in plan)
    vocab = json.loads((a.model_path / "config.json").read_text())["vocab_size"]
    sft_data, pairs = S8.write_data(out / "data", vocab, most * a.sft_bs * a.sft_steps, most * a.dpo_bs * a.dpo_steps,
                                    a.maxlen)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH", "")) if x)}
    if a.cpu:
        env["OMP_NUM_THREADS"] = "1"
    rows, first_sft = [], None
    for i, (name, acc, n) in enumerate(plan):
        o = out / f"sft-{i}"
        rows.append(run_stage(a, "sft", name, acc, n, sft_data, o, None, env))
        if first_sft is None and "error" not in rows[-1]:
            first_sft = o
    for i, (name, acc, n) in enumerate(plan):
        if first_sft is None:
            break
        rows.append(run_stage(a, "dpo", name, acc, n, pairs, out / f"dpo-{i}", first_sft, env))
    efficiency(rows)
    device = "cpu" if a.cpu else f"{n_gpus} x {torch.cuda.get_device_name(0)}"
    rep = {"date": time.strftime("%Y-%m-%d"), "device": device, "size": a.size, "maxlen": a.maxlen,
           "per_device_batch": {"sft": a.sft_bs, "dpo_pairs": a.dpo_bs}, "rows": rows}
    name = f"scaling-{rep['date']}-{TS._slug(device)}.json"
    for d in (out, Path(a.results_dir)):
        d.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(json.dumps(rep, indent=1))
    print_table(rep)


if __name__ == "__main__":
    main()
