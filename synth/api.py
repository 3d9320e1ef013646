"""synth's stage functions, as the runner and the CLI call them (see docs/CONTRACT.md).

Each stage: ``fn(<input folders>, out_dir, work_dir, config[, teacher]) -> dict`` (the manifest's counts and
metrics). Teacher calls go through ``Teacher`` with its SQLite log/cache at ``work_dir / "calls.sqlite"``, so a
killed stage re-run replays every completed call for free.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from orchard.dataio import read_rows, write_split
from orchard.errors import InputError

from .ledger import Ledger
from .methods_config import JudgeConfig, PreferencesConfig, SeedsConfig, SelfInstructConfig, SynthConfig

# Self-Instruct settings a tiny teacher (128-256 tokens of context) can follow; pass the same values in the
# quickstart's SynthConfig so the prompts it is trained on are the prompts it will be sent.
TINY_TEACHER_SELF_INSTRUCT = {"num_prompt_instructions": 3, "num_machine_instructions": 1, "tasks_per_prompt": 2}


def teacher_training_examples(seeds: list[dict], n: int, seed: int = 0,
                              config: Optional[SynthConfig] = None, max_chars: int = 600) -> list[dict]:
    """``n`` chat examples ``{"messages": [user, assistant]}`` whose user turns are exactly what the Self-Instruct
    stage sends with ``config`` (bootstrap, classify, instance prompts; also the plain response prompt) and whose
    assistant turns are valid answers built from real seed tasks (a bootstrap prompt answered with other seed
    tasks as "Task N: ..." lines; "Yes"/"No"; "Input: ...\\nOutput: ..." or "Class label: ...\\nInput: ...").

    ``config=None`` uses ``TINY_TEACHER_SELF_INSTRUCT`` (3 in-context tasks, 2 new ones). Examples longer than
    ``max_chars`` are skipped so they fit a tiny model's context.
    """
    from .self_instruct import training_examples

    if config is None:
        config = SynthConfig(self_instruct=SelfInstructConfig(**TINY_TEACHER_SELF_INSTRUCT))
    return training_examples(seeds, n, seed, config, max_chars=max_chars)


# -- stages -----------------------------------------------------------------------------------------


def _open_teacher(teacher, work_dir: Path, use_cache: bool):
    """(Teacher, provenance dict, owned?) from a TeacherConfig (the usual case) or a ready Teacher."""
    from .teacher import Teacher

    if isinstance(teacher, Teacher):
        return teacher, teacher.config.provenance(), False
    if teacher is None:
        raise InputError("this stage needs a teacher (base_url + model)", field="teacher")
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    t = Teacher(teacher, Path(work_dir) / "calls.sqlite", use_cache=use_cache)
    return t, teacher.provenance(), True


def _read_folder(folder, what: str) -> list[dict]:
    folder = Path(folder)
    if not folder.exists():
        raise InputError("not found", path=folder)
    if not (folder / "train.parquet").exists():
        raise InputError(f"not a {what} dataset folder (no train.parquet)", path=folder)
    return read_rows(folder)


def _finish(out_dir: Path, ledger: Ledger, rows: list[dict], title: str, report: bool, teacher=None,
            judge_scores=None, embed_model=None, extra=None, prompts=None, responses=None) -> dict:
    from .report import write_report

    out_dir = Path(out_dir)
    write_split(out_dir, "train", rows)
    ledger.write(out_dir)
    generated = ledger.steps.get("generated", 0)
    man = {"counts": {"generated": generated, "kept": len(rows), "rejected": len(ledger.rejected),
                      "train": len(rows)},
           "rejection_reasons": ledger.reasons(), "steps": dict(ledger.steps)}
    if teacher is not None:
        man["teacher_usage"] = teacher.usage_summary()
    if report:
        man["metrics"] = write_report(out_dir, title, ledger, prompts or [], responses or [], judge_scores,
                                      embed_model, extra)
    elif extra:
        man["metrics"] = dict(extra)
    return man


def seeds_stage(seed_path, out_dir: Path, work_dir: Path, config: Optional[SeedsConfig] = None) -> dict:
    """Seed file → seeds dataset folder (train split). Raises InputError on a bad file; nothing written then."""
    from .seeds import load_seeds

    config = config or SeedsConfig()
    rows = load_seeds(seed_path)
    if config.max_seeds:
        rows = rows[: config.max_seeds]
    write_split(out_dir, "train", rows)
    return {"counts": {"train": len(rows), "classification": sum(r["is_classification"] for r in rows)},
            "source": str(seed_path)}


def _load_seed_rows(seeds_dir) -> list[dict]:
    from .seeds import load_seeds

    p = Path(seeds_dir)
    if p.is_file():
        return load_seeds(p)
    rows = _read_folder(p, "seeds")
    for r in rows:
        r.setdefault("input", "")
        if "instruction" not in r:  # an SFT folder used as seeds: its first user turn is the instruction
            msgs = r["messages"]
            r["instruction"] = next(m["content"] for m in msgs if m["role"] == "user")
            r["output"] = next((m["content"] for m in reversed(msgs) if m["role"] == "assistant"), "")
            r["is_classification"] = False
    return rows


def instructions_stage(seeds_dir, out_dir: Path, work_dir: Path, config: SynthConfig, teacher) -> dict:
    """Seeds (a seeds folder or a seed file; unused by ``grounded``) → SFT folder + rejected.parquet + report.md.

    Generation goes on until ``config.num`` pairs pass every filter (``fill``), or a cap stops it: the method's own
    (rounds, seeds, sources) or the teacher's budget. The result's ``outcome`` says how it ended."""
    from .evol import Evol
    from .fill import RowKeeper
    from .grounded import Grounded
    from .magpie import Magpie
    from .self_instruct import SelfInstruct

    out_dir, work_dir = Path(out_dir), Path(work_dir)
    seeds = _load_seed_rows(seeds_dir) if seeds_dir is not None else []
    if config.method != "grounded" and not seeds:
        raise InputError("no seeds to grow from", path=seeds_dir)
    t, tprov, owned = _open_teacher(teacher, work_dir, config.use_cache)
    ledger = Ledger()
    try:
        method = {"self_instruct": SelfInstruct, "evol": Evol, "grounded": Grounded, "magpie": Magpie}[config.method](
            config, t, ledger, tprov)
        got = method.run(seeds, RowKeeper(config.filters, ledger))
        kept = got.rows
        prompts = [next(m["content"] for m in r["messages"] if m["role"] == "user") for r in kept]
        responses = [r["messages"][-1]["content"] for r in kept]
        sem = config.filters.semantic
        man = _finish(out_dir, ledger, kept, f"synth: {config.method}", config.report, t,
                      embed_model=sem.model if sem.enabled else None, prompts=prompts, responses=responses)
    finally:
        if owned:
            t.close()
    stopped = got.stopped_by or (f"{method.cap} reached" if got.exhausted else None)
    man.update({"method": config.method, "seed": config.seed, "num_target": config.num,
                "seeds": len(seeds), "outcome": ledger.outcome(len(kept), config.num, config.min_num, stopped,
                                                              "pairs")})
    return man


def judge_stage(sft_dir, out_dir: Path, work_dir: Path, config: JudgeConfig, teacher) -> dict:
    """SFT folder → the same rows with provenance ``judge``; rows below ``min_overall`` go to rejected.parquet."""
    from orchard.dataio import with_provenance

    from .judge import Judge
    from .preferences import prompt_of

    rows = _read_folder(sft_dir, "SFT")
    t, tprov, owned = _open_teacher(teacher, work_dir, config.use_cache)
    ledger = Ledger()
    try:
        judge = Judge(t, config.criteria, config.templates, config.temperature, config.max_tokens, config.seed,
                      tprov["model"])
        verdicts = judge.rate_many([(prompt_of(r), r["messages"][-1]["content"]) for r in rows])
        kept, scores = [], []
        for r, v in zip(rows, verdicts):
            ledger.count("generated")
            text = prompt_of(r)[-1]["content"] if prompt_of(r) else ""
            if not isinstance(v, dict):
                ledger.reject(text, v.reason, "judge", r.get("seed_id", ""), r.get("id", ""), {"detail": v.detail})
                continue
            scores.append(v["overall"])
            if config.min_overall is not None and v["overall"] < config.min_overall:
                ledger.reject(text, "judge:below_threshold", "judge", r.get("seed_id", ""), r.get("id", ""),
                              {"overall": v["overall"], "min_overall": config.min_overall})
                continue
            kept.append(with_provenance(r, judge=v))
        man = _finish(out_dir, ledger, kept, "synth: judge", config.report, t, judge_scores=scores,
                      prompts=[prompt_of(r)[-1]["content"] for r in kept],
                      responses=[r["messages"][-1]["content"] for r in kept])
    finally:
        if owned:
            t.close()
    man["min_overall"] = config.min_overall
    man["outcome"] = ledger.outcome(len(kept), what="rows")
    return man


def _pref_finish(out_dir, ledger, pairs, config, t, title):
    man = _pref_result(out_dir, ledger, pairs, config, t, title)
    man["outcome"] = ledger.outcome(len(pairs), what="pairs")
    return man


def _pref_result(out_dir, ledger, pairs, config, t, title):
    scores = []
    for p in pairs:
        prov = json.loads(p["provenance"]) if isinstance(p["provenance"], str) else p["provenance"]
        j = prov.get("judge")
        if j:
            scores += [j["chosen"]["overall"], j["rejected"]["overall"]]
    margins = [(json.loads(p["provenance"]) if isinstance(p["provenance"], str) else p["provenance"])["margin"]
               for p in pairs]
    extra = {"margin_mean": round(sum(margins) / len(margins), 4) if margins else None}
    return _finish(out_dir, ledger, pairs, title, config.report, t, judge_scores=scores or None, extra=extra,
                   prompts=[p["prompt"][-1]["content"] for p in pairs],
                   responses=[p["chosen"][0]["content"] for p in pairs])


def preferences_stage(prompts_dir, out_dir: Path, work_dir: Path, config: PreferencesConfig, teacher) -> dict:
    """Prompts (an SFT or preference folder) → N teacher responses each → judged chosen/rejected pairs."""
    from .judge import Judge
    from .preferences import make_pairs, sample_responses

    rows = _read_folder(prompts_dir, "prompts")[: config.max_prompts or None]
    t, tprov, owned = _open_teacher(teacher, work_dir, config.use_cache)
    ledger = Ledger()
    extra_teachers = []
    try:
        for i, tc in enumerate(config.response_teachers):
            extra_teachers.append(_open_teacher(tc, work_dir, config.use_cache)[0])
        samples = sample_responses(rows, config, t, ledger, extra_teachers or None)
        judge = Judge(t, config.criteria, config.templates, config.judge_temperature, config.judge_max_tokens,
                      config.seed, tprov["model"])
        pairs = make_pairs(rows, [[s for s, _, _ in ss] for ss in samples], config, judge, ledger, config.judge,
                           extra=[{"temperatures": [tt for _, tt, _ in ss], "response_models": [m for _, _, m in ss],
                                   "teacher": tprov} for ss in samples])
        man = _pref_finish(out_dir, ledger, pairs, config, t, f"synth: preferences ({config.judge})")
    finally:
        for x in extra_teachers:
            x.close()
        if owned:
            t.close()
    man["judge"] = config.judge
    return man


def judge_candidates_stage(candidates_dir, out_dir: Path, work_dir: Path, config: PreferencesConfig, teacher) -> dict:
    """Candidates folder (prompt + completions from the policy) → preference pairs. Pairwise judge in both orders
    (tie when they disagree) unless the config sets ``judge: rating`` explicitly."""
    from .judge import Judge
    from .preferences import make_pairs

    rows = _read_folder(candidates_dir, "candidates")[: config.max_prompts or None]
    for i, r in enumerate(rows):
        if "prompt" not in r or "completions" not in r:
            raise InputError("candidates rows need 'prompt' and 'completions'", path=candidates_dir, line=i + 1)
    mode = config.judge if "judge" in config.model_fields_set else "pairwise"
    t, tprov, owned = _open_teacher(teacher, work_dir, config.use_cache)
    ledger = Ledger()
    try:
        judge = Judge(t, config.criteria, config.templates, config.judge_temperature, config.judge_max_tokens,
                      config.seed, tprov["model"])
        comps = [[c for c in (r["completions"] or []) if isinstance(c, str) and c.strip()] for r in rows]
        pairs = make_pairs(rows, comps, config, judge, ledger, mode)
        man = _pref_finish(out_dir, ledger, pairs, config, t, f"synth: judged candidates ({mode})")
    finally:
        if owned:
            t.close()
    man["judge"] = mode
    return man
