"""The baseline for synth_vs_distilabel.py: distilabel 1.5's Self-Instruct pipeline, run in distilabel's own venv.

Seeds -> ``SelfInstruct`` (``num_instructions`` per seed) -> ``ExpandColumns`` (one row per instruction) ->
``TextGeneration`` (a response per instruction), both tasks on ``OpenAILLM`` pointed at ``--base-url`` with the
given timeout and SDK retries; ``input_batch_size`` is the number of calls a task sends at once. Uses distilabel's
own pipeline cache (``use_cache=True`` under ``--cache-dir``) so a killed run resumes as documented.

    <distilabel venv>/bin/python benchmarks/distilabel_self_instruct.py --base-url http://127.0.0.1:PORT/v1 \
        --seeds seeds.json --out rows.jsonl --cache-dir /tmp/dl-cache

Writes the final rows as JSONL (instruction, generation) and prints one JSON line ``{"gen_s": ...}``. If
``pipeline.run`` raises, the rows the last step wrote to its cache files are salvaged and the error is reported.
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base-url", required=True)
    ap.add_argument("--seeds", required=True, help="JSON list of seed task texts")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cache-dir", required=True)
    ap.add_argument("--name", default="orchard-bench-self-instruct")
    ap.add_argument("--num-instructions", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--timeout", type=int, default=10)
    ap.add_argument("--max-retries", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()
    t_import = time.perf_counter()

    from distilabel.models import OpenAILLM
    from distilabel.pipeline import Pipeline
    from distilabel.steps import ExpandColumns, LoadDataFromDicts
    from distilabel.steps.tasks import SelfInstruct, TextGeneration

    with open(a.seeds) as f:
        seeds = json.load(f)

    def llm():
        return OpenAILLM(model="fake", base_url=a.base_url, api_key="sk-local", max_retries=a.max_retries,
                         timeout=a.timeout)

    with Pipeline(name=a.name, cache_dir=a.cache_dir) as pipeline:
        load = LoadDataFromDicts(data=[{"input": s} for s in seeds], batch_size=a.batch_size)
        si = SelfInstruct(llm=llm(), num_instructions=a.num_instructions, input_batch_size=a.batch_size,
                          add_raw_output=False, add_raw_input=False)
        expand = ExpandColumns(columns={"instructions": "instruction"}, input_batch_size=a.batch_size)
        gen = TextGeneration(llm=llm(), input_batch_size=a.batch_size, add_raw_output=False, add_raw_input=False)
        load >> si >> expand >> gen

    params = {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": a.max_tokens}
    t0 = time.perf_counter()
    rows, error = [], None
    try:
        distiset = pipeline.run(
            use_cache=True,
            parameters={si.name: {"llm": {"generation_kwargs": params}},
                        gen.name: {"llm": {"generation_kwargs": dict(params, temperature=0.7)}}},
        )
        for config in distiset.values():
            for split in config.values():
                rows += [{k: r.get(k) for k in ("input", "instruction", "generation")} for r in split]
    except Exception as e:  # noqa: BLE001  e.g. building the Distiset from step files of mixed null/string schema
        # Salvage what the last step wrote, one file at a time, so the benchmark counts what exists on disk.
        import glob

        import pyarrow.parquet as pq

        error = f"{type(e).__name__}: {str(e)[:200]}"
        for f in sorted(glob.glob(f"{a.cache_dir}/**/steps_outputs/{gen.name}/*.parquet", recursive=True)):
            rows += [{k: r.get(k) for k in ("input", "instruction", "generation")}
                     for r in pq.read_table(f).to_pylist()]
    gen_s = time.perf_counter() - t0
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, a.out)
    print(json.dumps({"gen_s": round(gen_s, 3), "import_s": round(t0 - t_import, 3), "rows": len(rows),
                      "pipeline_error": error}), flush=True)


if __name__ == "__main__":
    main()
