"""Sampling from policies: RLAIF candidates, SPIN-style policy pairs, and head-to-head samples for win-rates.

Generation never uses a training model. Each call loads its own copy of base + adapter, merged and
non-quantized by default (``SampleConfig.quantized`` keeps the base in 4-bit on a GPU to save memory), so
bitsandbytes' CPU inference repacking can never touch weights that are later trained. Finished batches are
appended to a JSONL cache in ``work_dir``: a killed run resumes without regenerating them.
"""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import torch

from orchard.dataio import content_hash, provenance, write_split
from orchard.errors import InputError

from . import data as D
from .config import SampleConfig
from .modeling import load_inference_policy


class _Cache:
    """Append-only JSONL of finished generations keyed by (policy, prompt, sampling settings)."""

    def __init__(self, path: Path):
        self.path = path
        self.done: dict[str, list[str]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash: regenerate that one
                    continue
                self.done[rec["key"]] = rec["completions"]

    def add(self, items: list[tuple[str, list[str]]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            for k, c in items:
                f.write(json.dumps({"key": k, "completions": c}, ensure_ascii=False) + "\n")
                self.done[k] = c
            f.flush()
            os.fsync(f.fileno())


def _sampling_key(config: SampleConfig, n: int) -> dict:
    return {"n": n, "max_new_tokens": config.max_new_tokens, "temperature": config.temperature,
            "top_p": config.top_p, "seed": config.seed}


@torch.no_grad()
def generate(model, tok, prompts: list[list[dict]], n: int, config: SampleConfig, cache: _Cache | None = None,
             policy_key: str = "") -> list[list[str]]:
    """``n`` sampled completions per prompt (left-padded batches, one seed per batch so reruns match)."""
    tok.padding_side = "left"
    skey = _sampling_key(config, n)
    keys = [content_hash({"policy": policy_key, "prompt": p, "sampling": skey}) for p in prompts]
    eos = [t for t in {tok.eos_token_id, *(_as_list(model.generation_config.eos_token_id))} if t is not None]
    dev = next(model.parameters()).device
    for b in range(0, len(prompts), config.batch_size):
        bkeys = keys[b : b + config.batch_size]
        if cache is not None and all(k in cache.done for k in bkeys):
            continue
        texts = [tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts[b : b + config.batch_size]]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
        torch.manual_seed(config.seed + b)
        out = model.generate(
            **enc, do_sample=config.temperature > 0, temperature=config.temperature or None,
            top_p=config.top_p if config.temperature > 0 else None, max_new_tokens=config.max_new_tokens,
            num_return_sequences=n, pad_token_id=tok.pad_token_id, eos_token_id=eos,
        )
        new = out[:, enc["input_ids"].shape[1]:]
        dec = [s.strip() for s in tok.batch_decode(new, skip_special_tokens=True)]
        items = [(k, dec[i * n : (i + 1) * n]) for i, k in enumerate(bkeys)]
        if cache is not None:
            cache.add(items)
        else:  # no cache: keep results in a throwaway one
            cache = _Cache(Path(os.devnull))
            cache.done.update(dict(items))
    return [cache.done[k] for k in keys] if cache is not None else []


def _as_list(x):
    if x is None:
        return []
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _free(model) -> None:
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _rows_and_prompts(prompts_dir: Path, split: str, max_prompts: int | None):
    rows = D.read_prompts(prompts_dir, split)
    if max_prompts:
        rows = rows[:max_prompts]
    if not rows:
        raise InputError("no prompts", path=Path(prompts_dir) / f"{split}.parquet")
    return rows, [D.prompt_of(r) for r in rows]


def sample_stage(prompts_dir: Path, sft_dir: Path, out_dir: Path, work_dir: Path, config: SampleConfig) -> dict:
    """RLAIF candidates: ``num_completions`` samples per prompt from the policy in ``sft_dir``.

    Output rows (contract "Candidates"): prompt, completions, id, seed_id, provenance (method policy_sample).
    """
    t0 = time.perf_counter()
    rows, prompts = _rows_and_prompts(Path(prompts_dir), config.split, config.max_prompts)
    model, tok, info = load_inference_policy(sft_dir, quantized=config.quantized, dtype=config.dtype)
    cache = _Cache(Path(work_dir) / "samples.jsonl")
    comps = generate(model, tok, prompts, config.num_completions, config, cache, policy_key=str(Path(sft_dir).resolve()))
    _free(model)
    out = []
    for r, p, c in zip(rows, prompts, comps):
        seed_id = r.get("seed_id") or r.get("id")
        row = {"prompt": p, "completions": c}
        row = {"id": content_hash(row), "seed_id": seed_id, **row, "provenance": provenance(r)}
        from orchard.dataio import with_provenance

        out.append(with_provenance(row, method="policy_sample", parent_id=r.get("id"), seed_id=seed_id,
                                   policy=info.get("stage", "policy"), sampling=_sampling_key(config,
                                                                                            config.num_completions)))
    write_split(out_dir, "train", out)
    dt = time.perf_counter() - t0
    return {"stage": "sample", "prompts": len(out), "completions": sum(len(c) for c in comps),
            "generation": "separate non-quantized merged copy" if not config.quantized else "separate 4-bit copy",
            "time_s": round(dt, 2)}


def _pairs_from(rows: list[dict], samples: list[list[str]], policy: str) -> tuple[list[dict], int]:
    from orchard.dataio import with_provenance

    out, same = [], 0
    for r, s in zip(rows, samples):
        ref = r["messages"][-1]["content"]
        rejected = next((x for x in s if x.strip() != ref.strip()), None)
        if rejected is None:  # the policy already reproduces the reviewed answer: no signal in this pair
            same += 1
            continue
        p = {"prompt": D.prompt_of(r), "chosen": [{"role": "assistant", "content": ref}],
             "rejected": [{"role": "assistant", "content": rejected}]}
        seed_id = r.get("seed_id") or r.get("id")
        row = {"id": content_hash(p), "seed_id": seed_id, **p, "provenance": provenance(r)}
        out.append(with_provenance(row, method="reference_vs_policy", parent_id=r.get("id"), seed_id=seed_id,
                                   policy=policy, margin=1.0))
    return out, same


def policy_pairs_stage(sft_data_dir: Path, sft_dir: Path, out_dir: Path, work_dir: Path,
                       config: SampleConfig) -> dict:
    """SPIN-style pairs without a judge: chosen = the dataset's reviewed answer, rejected = the policy's sample.

    Writes ``train.parquet`` from the SFT train split and ``test.parquet`` from its test split (if any).
    """
    t0 = time.perf_counter()
    sft_data_dir = Path(sft_data_dir)
    model, tok, info = load_inference_policy(sft_dir, quantized=config.quantized, dtype=config.dtype)
    cache = _Cache(Path(work_dir) / "samples.jsonl")
    counts = {}
    for split in ("train", "test"):
        rows = D.read_sft(sft_data_dir, split, required=split == "train")
        if rows is None:
            continue
        if config.max_prompts:
            rows = rows[: config.max_prompts]
        samples = generate(model, tok, [D.prompt_of(r) for r in rows], config.num_completions, config, cache,
                           policy_key=str(Path(sft_dir).resolve()))
        pairs, same = _pairs_from(rows, samples, info.get("stage", "sft"))
        if split == "train" and not pairs:
            raise InputError("the policy reproduced every reference answer; no pairs to train on", path=sft_dir)
        write_split(out_dir, split, pairs)
        counts[f"{split}_pairs"] = len(pairs)
        counts[f"{split}_identical_skipped"] = same
    _free(model)
    return {"stage": "policy_pairs", "mode": "reference_vs_policy", **counts,
            "generation": "separate non-quantized merged copy" if not config.quantized else "separate 4-bit copy",
            "time_s": round(time.perf_counter() - t0, 2)}


def sample_policies_stage(prompts_dir: Path, policies: dict[str, Path | None], out_dir: Path, work_dir: Path,
                          config: SampleConfig, comparisons: list[tuple[str, str]] | None = None,
                          base_model: str | None = None) -> dict:
    """Head-to-head samples for judge win-rates: one completion per prompt from each named policy.

    ``policies`` maps a name to a policy folder (None = the bare base model, then ``base_model`` or the
    base of another policy is used). For each (a, b) in ``comparisons`` (default: the first policy, e.g. the
    final DPO one, against each of the others) writes ``out_dir/<a>_vs_<b>/train.parquet`` in the candidates format with
    ``completions == [a's answer, b's answer]`` and ``provenance.policies == [a, b]``; synth's pairwise
    judge then picks winners, and ``evaluate.win_rates`` turns its output into rates.
    """
    t0 = time.perf_counter()
    rows, prompts = _rows_and_prompts(Path(prompts_dir), config.split, config.max_prompts)
    names = list(policies)
    if base_model is None:
        from .modeling import read_policy_info

        for d in policies.values():
            if d is not None:
                base_model = read_policy_info(d)["base_model"]
                break
    tok_src = next((d for d in policies.values() if d is not None), None)
    answers: dict[str, list[str]] = {}
    cache = _Cache(Path(work_dir) / "samples.jsonl")
    one = config.model_copy(update={"num_completions": 1})
    for name, d in policies.items():
        model, tok, _ = load_inference_policy(d, base_model=base_model if d is None else None,
                                              quantized=config.quantized, dtype=config.dtype)
        if d is None and tok_src is not None:
            # The bare base is prompted with the same chat template as the trained policies.
            from .modeling import policy_tokenizer, read_policy_info

            tok = policy_tokenizer(tok_src, read_policy_info(tok_src))
        key = str(Path(d).resolve()) if d is not None else f"base:{base_model}"
        answers[name] = [c[0] for c in generate(model, tok, prompts, 1, one, cache, policy_key=key)]
        _free(model)
    comparisons = comparisons or [(names[0], other) for other in names[1:]]
    from orchard.dataio import with_provenance

    written = {}
    for a, b in comparisons:
        out = []
        for r, p, x, y in zip(rows, prompts, answers[a], answers[b]):
            seed_id = r.get("seed_id") or r.get("id")
            row = {"prompt": p, "completions": [x, y]}
            row = {"id": content_hash({"pair": [a, b], **row}), "seed_id": seed_id, **row,
                   "provenance": provenance(r)}
            out.append(with_provenance(row, method="policy_sample", parent_id=r.get("id"), seed_id=seed_id,
                                       policies=[a, b]))
        write_split(Path(out_dir) / f"{a}_vs_{b}", "train", out)
        written[f"{a}_vs_{b}"] = len(out)
    return {"stage": "sample_policies", "prompts": len(rows), "comparisons": written,
            "time_s": round(time.perf_counter() - t0, 2)}
