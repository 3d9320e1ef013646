"""The runner's stage table: for each stage, where its inputs come from and which package function runs it.

This is the one place that composes synth, review and align; each adapter is a few lines that hand dataset
folders from one package to the next. Package imports happen inside the adapters, so that a recipe using only
some stages never imports the rest.
"""

from __future__ import annotations

from pathlib import Path

from orchard.dataio import read_rows, write_split
from orchard.errors import InputError
from orchard.schema import ModelRef
from orchard.stage import StageContext, StageSpec


def _path(p: str, field: str) -> Path:
    path = Path(p).expanduser()
    if not path.exists():
        raise InputError("file or folder not found", path=path, field=field)
    return path


def _require_rows(folder: Path, split: str = "train") -> list[dict]:
    """Rows of an upstream stage, or a clear error when it produced none (rather than failing downstream)."""
    rows = read_rows(folder, split)
    if not rows:
        report = folder / "report.md"
        hint = f"; its report says why: {report}" if report.exists() else ""
        raise InputError(f"stage '{folder.name}' produced no rows in {split}.parquet{hint}", path=folder)
    return rows


def _latest(run_dir: Path, recipe, *candidates: str) -> Path:
    """The output folder of the nearest earlier stage, among ``candidates`` (latest first), that the recipe has."""
    for name in candidates:
        if getattr(recipe, name, None) is not None:
            return run_dir / name
    raise InputError(f"this stage needs one of the stages {', '.join(candidates)} earlier in the recipe")


# ---------------------------------------------------------------- seeds

def _seeds_inputs(recipe, run_dir):
    return {"seeds": _path(recipe.seeds.path, "seeds.path")}


def _seeds_run(ctx: StageContext) -> dict:
    from orchard.synth.api import seeds_stage

    return seeds_stage(ctx.inputs["seeds"], ctx.out_dir, ctx.work_dir, ctx.config)


# ---------------------------------------------------------------- tabular

def _tabular_inputs(recipe, run_dir):
    return {"table": _path(recipe.tabular.table, "tabular.table")}


def _tabular_run(ctx: StageContext) -> dict:
    from orchard.synth.tabular.api import tabular_stage

    return tabular_stage(ctx.inputs["table"], ctx.out_dir, ctx.work_dir, ctx.config.options)


# ---------------------------------------------------------------- teacher_model (the offline quickstart's teacher)

def _teacher_model_inputs(recipe, run_dir):
    return {"seeds": run_dir / "seeds"}


def _teacher_model_fingerprint(recipe):
    # The prompts the teacher learns come from the synth config, so a change there retrains it.
    if recipe.synth is None:
        return None
    s = recipe.synth.model_dump(mode="json")
    return {"self_instruct": s["self_instruct"], "templates": s["templates"]}


def _teacher_model_run(ctx: StageContext) -> dict:
    from orchard.synth.api import teacher_training_examples
    from orchard.teacher_train import train_tiny_teacher

    cfg = ctx.config
    seeds = read_rows(ctx.inputs["seeds"])
    # The teacher learns exactly the prompts this recipe's synth stage will send.
    examples = teacher_training_examples(seeds, cfg.examples, seed=cfg.seed, config=ctx.recipe.synth)
    return train_tiny_teacher(ctx.out_dir / "model", examples, seconds=cfg.seconds, max_steps=cfg.max_steps,
                              clock=cfg.clock, batch_size=cfg.batch_size, seq_len=cfg.seq_len,
                              lr=cfg.learning_rate, assistant_only=cfg.assistant_only, seed=cfg.seed)


# ---------------------------------------------------------------- synth

def _with_served_teacher(recipe, run_dir, inputs: dict) -> dict:
    """A teacher this run trains and serves is an input like any other: retrain it and its users re-run."""
    serve = getattr(recipe.teacher, "serve", None)
    if serve is not None and serve.model.stage is not None:
        inputs["teacher_model"] = run_dir / serve.model.stage
    return inputs


def _synth_inputs(recipe, run_dir):
    inputs = {"seeds": run_dir / "seeds"} if recipe.seeds is not None else {}
    if recipe.tabular is not None:
        inputs["records"] = run_dir / "tabular"
    return _with_served_teacher(recipe, run_dir, inputs)


def _teacher_identity(recipe):
    """What the fingerprint knows of the teacher: its model and endpoint, never a key; a served model by content."""
    t = recipe.teacher
    if t is None:
        return None
    data = t.model_dump(mode="json")
    serve = data.pop("serve", None)
    if serve:
        data.pop("base_url", None)
        data["served"] = serve
    return data


def _synth_run(ctx: StageContext) -> dict:
    from orchard.synth.api import instructions_stage

    cfg = ctx.config
    table = ModelRef(str(cfg.grounded.table)) if cfg.grounded.table is not None else None
    if table is not None and table.stage is not None:
        # 'run:tabular' = the rows this run's tabular stage made (synth re-checks their privacy gate itself).
        cfg = cfg.model_copy(update={"grounded": cfg.grounded.model_copy(
            update={"table": ctx.run_dir / table.stage})})
    return instructions_stage(ctx.inputs.get("seeds"), ctx.out_dir, ctx.work_dir, cfg, ctx.teacher)


# ---------------------------------------------------------------- judge: the AI judge rates every pair

def _judge_inputs(recipe, run_dir):
    return _with_served_teacher(recipe, run_dir, {"data": _latest(run_dir, recipe, "synth", "seeds")})


def _judge_run(ctx: StageContext) -> dict:
    from orchard.synth.api import judge_stage

    _require_rows(ctx.inputs["data"])
    return judge_stage(ctx.inputs["data"], ctx.out_dir, ctx.work_dir, ctx.config, ctx.teacher)


# ---------------------------------------------------------------- review

def _review_inputs(recipe, run_dir):
    return {"data": _latest(run_dir, recipe, "judge", "synth", "seeds")}


def _review_run(ctx: StageContext) -> dict:
    from orchard.review.api import review_stage

    _require_rows(ctx.inputs["data"])
    return review_stage(ctx.inputs["data"], ctx.out_dir, ctx.work_dir, ctx.config)


# ---------------------------------------------------------------- split

def _split_inputs(recipe, run_dir):
    return {"data": _latest(run_dir, recipe, "review", "judge", "synth", "seeds")}


def _split_run(ctx: StageContext) -> dict:
    from orchard.lineage import lineage_split

    rows = _require_rows(ctx.inputs["data"])
    if len(rows) < 2:
        raise InputError(f"{ctx.inputs['data']}: {len(rows)} rows; a held-out split needs at least 2")
    cfg = ctx.config
    seed = cfg.seed if cfg.seed is not None else ctx.recipe.seed
    res = lineage_split(rows, test_size=cfg.test_size, threshold=cfg.near_duplicate_threshold, seed=seed)
    write_split(ctx.out_dir, "train", res.train)
    write_split(ctx.out_dir, "test", res.test)
    return res.stats()


# ---------------------------------------------------------------- sft

def _sft_inputs(recipe, run_dir):
    return {"data": run_dir / "split" if recipe.split is not None else _latest(run_dir, recipe, "review", "judge", "synth")}


def _sft_run(ctx: StageContext) -> dict:
    from orchard.align.api import sft_stage

    return sft_stage(ctx.inputs["data"], ctx.out_dir, ctx.work_dir, _with_base_model(ctx.config, ctx.run_dir))


def _with_base_model(cfg, run_dir: Path):
    """An align config whose ``base_model`` may be ``run:<stage>``, with that made the stage's model folder."""
    if cfg.base_model is None or cfg.base_model.stage is None:  # a ModelRef (align's config parses it)
        return cfg
    return cfg.model_copy(update={"base_model": cfg.base_model.resolve(run_dir)})


# ---------------------------------------------------------------- preferences

def _preferences_inputs(recipe, run_dir):
    inputs = {"data": run_dir / "split" if recipe.split is not None else _latest(run_dir, recipe, "review", "judge", "synth")}
    if recipe.preferences.source == "reference_vs_policy":
        inputs["sft"] = run_dir / "sft"
        return inputs
    return _with_served_teacher(recipe, run_dir, inputs)


def _preferences_run(ctx: StageContext) -> dict:
    cfg = ctx.config
    if cfg.source == "reference_vs_policy":
        from orchard.align.api import policy_pairs_stage

        return policy_pairs_stage(ctx.inputs["data"], ctx.inputs["sft"], ctx.out_dir, ctx.work_dir, cfg.options)
    from orchard.synth.api import preferences_stage

    return preferences_stage(ctx.inputs["data"], ctx.out_dir, ctx.work_dir, cfg.options, ctx.teacher)


def _preferences_needs_teacher(recipe) -> bool:
    return recipe.preferences is not None and recipe.preferences.source == "judge"


# ---------------------------------------------------------------- dpo

def _dpo_inputs(recipe, run_dir):
    return {"pairs": run_dir / "preferences", "sft": run_dir / "sft"}


def _dpo_run(ctx: StageContext) -> dict:
    from orchard.align.api import dpo_stage

    cfg = _with_base_model(ctx.config, ctx.run_dir)
    return dpo_stage(ctx.inputs["pairs"], ctx.inputs["sft"], ctx.out_dir, ctx.work_dir, cfg)


# ---------------------------------------------------------------- rlaif: align samples, synth judges, align trains

def _rlaif_inputs(recipe, run_dir):
    start = run_dir / "dpo" if recipe.dpo is not None else run_dir / "sft"
    return _with_served_teacher(recipe, run_dir, {"data": run_dir / "split", "sft": run_dir / "sft", "policy": start})


def _rlaif_run(ctx: StageContext) -> dict:
    from orchard.align.api import dpo_stage, sample_stage
    from orchard.synth.api import judge_candidates_stage

    cfg = ctx.config
    dcfg = _with_base_model(cfg.dpo, ctx.run_dir)
    policy = ctx.inputs["policy"]
    rounds = []
    for r in range(1, cfg.rounds + 1):
        rd = ctx.out_dir / f"round-{r}"
        wd = ctx.work_dir / f"round-{r}"
        res = {"round": r}
        res["sample"] = _cached_step(wd / "candidates", rd / "candidates", lambda o, w: sample_stage(
            ctx.inputs["data"], policy, o, w, cfg.sample))
        res["judge"] = _cached_step(wd / "pairs", rd / "pairs", lambda o, w: judge_candidates_stage(
            rd / "candidates", o, w, cfg.judge, ctx.teacher))
        res["dpo"] = _cached_step(wd / "dpo", rd / "dpo", lambda o, w: dpo_stage(rd / "pairs", policy, o, w, dcfg))
        policy = rd / "dpo"
        rounds.append(res)
    return {"rounds": rounds, "final_policy": str(policy.relative_to(ctx.out_dir))}


def _cached_step(work: Path, out: Path, fn) -> dict:
    """One step of a multi-step stage, run into its own folder (the stage's temp output)."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return fn(out, work)


# ---------------------------------------------------------------- eval

def _eval_inputs(recipe, run_dir):
    inputs = {"data": run_dir / "split", "sft": run_dir / "sft"}
    if recipe.preferences is not None:
        inputs["pairs"] = run_dir / "preferences"
    if recipe.dpo is not None:
        inputs["dpo"] = run_dir / "dpo"
    if recipe.rlaif is not None:
        inputs["rlaif"] = run_dir / "rlaif"
    return _with_served_teacher(recipe, run_dir, inputs) if _eval_needs_teacher(recipe) else inputs


def _eval_needs_teacher(recipe) -> bool:
    return recipe.eval is not None and recipe.eval.win_rate is not None


def _final_policy(ctx: StageContext) -> Path | None:
    if "rlaif" in ctx.inputs:
        from orchard.dataio import read_manifest

        return ctx.inputs["rlaif"] / read_manifest(ctx.inputs["rlaif"])["result"]["final_policy"]
    return ctx.inputs.get("dpo")


def _eval_run(ctx: StageContext) -> dict:
    from orchard.align.api import eval_stage
    from orchard.align.config import EvalConfig

    block = ctx.config
    cfg = EvalConfig.model_validate(block.model_dump(exclude={"win_rate"}))
    if cfg.general_dir and Path(cfg.general_dir).suffix == ".jsonl":
        # A seed file (Self-Instruct's format) as the general set of the forgetting check: its rows carry messages.
        from orchard.synth.seeds import load_seeds

        general = ctx.work_dir / "general"
        write_split(general, "train", load_seeds(_path(cfg.general_dir, "eval.general_dir")))
        cfg = cfg.model_copy(update={"general_dir": str(general), "general_split": "train"})
    final = _final_policy(ctx)
    judged = None
    if block.win_rate is not None:
        judged = _judge_win_rates(ctx, final, block.win_rate, cfg.split)
    return eval_stage(ctx.inputs["data"], ctx.inputs.get("pairs"), ctx.inputs["sft"], final,
                      ctx.out_dir, ctx.work_dir, cfg, judged=judged)


def _judge_win_rates(ctx: StageContext, final: Path | None, wr, split: str) -> dict:
    """align samples each policy on held-out prompts; synth's pairwise judge (both orders) picks winners.

    Each stage is judged against the model it started from: SFT against the base, the final (DPO) policy
    against SFT."""
    from orchard.align.api import sample_policies_stage
    from orchard.align.config import SampleConfig
    from orchard.align.modeling import read_policy_info
    from orchard.synth.api import judge_candidates_stage

    policies: dict[str, Path | None] = {"sft": ctx.inputs["sft"]}
    comparisons = []
    if wr.include_base:
        policies["base"] = None
        comparisons.append(("sft", "base"))
    if final is not None:
        name = read_policy_info(final).get("stage", "dpo")
        policies[name] = final
        comparisons.append((name, "sft"))
    if not comparisons:
        return {}
    cands = ctx.out_dir / "win_rate" / "candidates"
    scfg = SampleConfig(num_completions=1, max_new_tokens=wr.max_new_tokens, split=split,
                        max_prompts=wr.max_prompts, temperature=wr.temperature)
    res = sample_policies_stage(ctx.inputs["data"], policies, cands, ctx.work_dir / "win_rate", scfg,
                                comparisons=comparisons)
    judged = {}
    for name in res["comparisons"]:
        out = ctx.out_dir / "win_rate" / "judged" / name
        judge_candidates_stage(cands / name, out, ctx.work_dir / "win_rate" / name, wr.judge, ctx.teacher)
        judged[name] = (out, cands / name)
    return judged


STAGES: dict[str, StageSpec] = {
    "seeds": StageSpec("seeds", _seeds_inputs, _seeds_run),
    "tabular": StageSpec("tabular", _tabular_inputs, _tabular_run),
    "teacher_model": StageSpec("teacher_model", _teacher_model_inputs, _teacher_model_run,
                               extra_fingerprint=_teacher_model_fingerprint),
    "synth": StageSpec("synth", _synth_inputs, _synth_run, needs_teacher=lambda r: True,
                       extra_fingerprint=_teacher_identity),
    "judge": StageSpec("judge", _judge_inputs, _judge_run, needs_teacher=lambda r: True,
                       extra_fingerprint=_teacher_identity),
    "review": StageSpec("review", _review_inputs, _review_run),
    "split": StageSpec("split", _split_inputs, _split_run),
    "sft": StageSpec("sft", _sft_inputs, _sft_run),
    "preferences": StageSpec("preferences", _preferences_inputs, _preferences_run,
                             needs_teacher=_preferences_needs_teacher,
                             extra_fingerprint=lambda r: _teacher_identity(r) if _preferences_needs_teacher(r) else None),
    "dpo": StageSpec("dpo", _dpo_inputs, _dpo_run),
    "rlaif": StageSpec("rlaif", _rlaif_inputs, _rlaif_run, needs_teacher=lambda r: True,
                       extra_fingerprint=_teacher_identity),
    "eval": StageSpec("eval", _eval_inputs, _eval_run, needs_teacher=_eval_needs_teacher,
                      extra_fingerprint=lambda r: _teacher_identity(r) if _eval_needs_teacher(r) else None),
}
