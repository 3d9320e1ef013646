"""`orchard synth …` commands: parse options, call the stage functions in ``api``, print a summary.

The work is done by ``orchard.synth.api``; the CLI only builds configs and prints. Outputs are written atomically
through ``orchard.runner.run_standalone``; teacher calls are cached in ``<out>/../.work/<out name>/calls.sqlite``,
so running the same command again after a crash pays nothing twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Grow seed examples into instruction data with a teacher LLM.", no_args_is_help=True,
                  add_completion=False)
console = Console()


def _teacher(base_url: str, model: str, api_key_env: str, concurrency: int):
    from .config import TeacherConfig

    return TeacherConfig(base_url=base_url, model=model, api_key_env=api_key_env, max_concurrency=concurrency)


def _yaml_config(cls, path: Optional[Path], section: Optional[str] = None, **overrides):
    """A config from an optional YAML file (whole file, or its ``section`` key), then CLI overrides."""
    data: dict = {}
    if path is not None:
        import yaml

        from orchard.errors import InputError

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"cannot read config: {e}", path=path) from None
        if section and isinstance(data.get(section), dict):
            data = data[section]
    for k, v in overrides.items():
        if v is not None:
            cur = data
            parts = k.split(".")
            for p in parts[:-1]:
                cur = cur.setdefault(p, {})
            cur[parts[-1]] = v
    from pydantic import ValidationError

    try:
        return cls.model_validate(data)
    except ValidationError as e:
        from orchard.errors import InputError

        first = e.errors()[0]
        raise InputError(first["msg"], path=path, field=".".join(str(x) for x in first["loc"])) from None


def _run(fn, out: Path, config, name: str, inputs: dict, **kw) -> dict:
    from orchard.runner import run_standalone

    from .callpool import TeacherInterrupted

    try:
        return run_standalone(fn, out, name=name, config=config, inputs={k: v for k, v in inputs.items() if v}, **kw)
    except TeacherInterrupted as e:
        # Typer turns a KeyboardInterrupt into a bare exit 130; say what was saved and how to resume.
        Console(stderr=True).print(str(e), style="yellow", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _summary(title: str, out: Path, result: dict) -> None:
    t = Table(title=title, show_header=True)
    t.add_column("what")
    t.add_column("count", justify="right")
    for k, v in result.get("counts", {}).items():
        t.add_row(k, str(v))
    for k, v in result.get("rejection_reasons", {}).items():
        t.add_row(f"  rejected: {k}", str(v))
    u = result.get("teacher_usage") or {}
    if u:
        t.add_row("teacher calls (paid)", str(u.get("calls", 0)))
        t.add_row("cache hits (free)", str(u.get("cache_hits", 0)))
        t.add_row("tokens", str(u.get("total_tokens", 0)))
    console.print(t)
    console.print(f"[green]wrote[/green] {out}  (train.parquet, rejected.parquet, report.md)")


TEACHER_OPTS = dict(
    base_url=typer.Option(..., "--base-url", help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
    model=typer.Option(..., "--model", help="model name at that endpoint"),
)


@app.command("seeds")
def seeds_cmd(
    seed_file: Path = typer.Argument(..., help="seed file: .jsonl (Self-Instruct tasks, {instruction,input,output} "
                                               "or {messages}), .csv or .parquet"),
    out: Path = typer.Option(..., "--out", help="output dataset folder"),
    max_seeds: Optional[int] = typer.Option(None, "--max-seeds", help="keep only the first N"),
):
    """Check a seed file and turn it into a seeds dataset folder.

    Example: orchard synth seeds data/seeds/self_instruct_seed_tasks.jsonl --out runs/demo/seeds
    """
    from .api import seeds_stage
    from .methods_config import SeedsConfig

    res = _run(seeds_stage, out, SeedsConfig(max_seeds=max_seeds), "seeds", {"seeds": seed_file}, seed_path=seed_file)
    console.print(f"[green]{res['counts']['train']} seeds[/green] ({res['counts']['classification']} classification) → {out}")


def _instructions(seeds, out, base_url, model, method, num, no_cache, config, seed, documents, table, eval_set,
                  pii, semantic, api_key_env, concurrency):
    from .api import instructions_stage
    from .methods_config import SynthConfig

    cfg = _yaml_config(SynthConfig, config, "synth", method=method, num=num, seed=seed,
                       use_cache=False if no_cache else None,
                       **{"grounded.documents": str(documents) if documents else None,
                          "grounded.table": str(table) if table else None,
                          "filters.decontam.eval_sets": [str(e) for e in eval_set] if eval_set else None,
                          "filters.pii.policy": pii, "filters.semantic.enabled": True if semantic else None})
    res = _run(instructions_stage, out, cfg, "synth", {"seeds": seeds, "documents": documents, "table": table},
               seeds_dir=seeds, teacher=_teacher(base_url, model, api_key_env, concurrency))
    _summary(f"synth {cfg.method}", out, res)


@app.command("instructions")
def instructions_cmd(
    seeds: Optional[Path] = typer.Argument(None, help="seed file or seeds folder (not needed for --method grounded)"),
    out: Path = typer.Option(..., "--out", help="output SFT dataset folder"),
    base_url: str = TEACHER_OPTS["base_url"],
    model: str = TEACHER_OPTS["model"],
    method: Optional[str] = typer.Option(None, "--method", help="self_instruct | evol | grounded | magpie"),
    num: Optional[int] = typer.Option(None, "--num", help="target number of kept instructions"),
    no_cache: bool = typer.Option(False, "--no-cache", help="call the teacher afresh (calls are still logged)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SynthConfig keys (or a 'synth:' section)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same seed: same requests, cache hits)"),
    documents: Optional[Path] = typer.Option(None, "--documents", help="grounded: folder of .txt/.md files"),
    table: Optional[Path] = typer.Option(None, "--table", help="grounded: tabular records folder (gate passed)"),
    eval_set: Optional[List[Path]] = typer.Option(None, "--eval-set", help="decontaminate against this eval set"),
    pii: Optional[str] = typer.Option(None, "--pii", help="mask | drop"),
    semantic: bool = typer.Option(False, "--semantic-dedup", help="also drop semantic duplicates (embeddings)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env", help="env var holding the API key"),
    concurrency: int = typer.Option(8, "--concurrency", help="requests in flight"),
):
    """Generate instruction/response pairs from seeds with a teacher (Self-Instruct, Evol-Instruct or grounded).

    Example: orchard synth instructions data/seeds/self_instruct_seed_tasks.jsonl --out runs/demo/synth
    --base-url http://127.0.0.1:8000/v1 --model teacher --method self_instruct --num 200
    """
    _instructions(seeds, out, base_url, model, method, num, no_cache, config, seed, documents, table, eval_set, pii,
                  semantic, api_key_env, concurrency)


@app.command("evolve")
def evolve_cmd(
    seeds: Path = typer.Argument(..., help="seed file or seeds/SFT folder whose prompts to evolve"),
    out: Path = typer.Option(..., "--out", help="output SFT dataset folder"),
    base_url: str = TEACHER_OPTS["base_url"],
    model: str = TEACHER_OPTS["model"],
    num: Optional[int] = typer.Option(None, "--num", help="most evolved prompts to keep"),
    rounds: Optional[int] = typer.Option(None, "--rounds", help="evolution depth"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SynthConfig keys"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(8, "--concurrency"),
):
    """Evol-Instruct: make prompts harder (constraints, depth, concreteness, reasoning) or new (breadth).

    Example: orchard synth evolve runs/demo/seeds --out runs/demo/evolved --base-url http://127.0.0.1:8000/v1
    --model teacher --rounds 2 --num 100
    """
    from .api import instructions_stage
    from .methods_config import SynthConfig

    cfg = _yaml_config(SynthConfig, config, "synth", method="evol", num=num, seed=seed,
                       use_cache=False if no_cache else None, **{"evol.rounds": rounds})
    res = _run(instructions_stage, out, cfg, "evolve", {"seeds": seeds}, seeds_dir=seeds,
               teacher=_teacher(base_url, model, api_key_env, concurrency))
    _summary("synth evolve", out, res)


@app.command("judge")
def judge_cmd(
    sft: Path = typer.Argument(..., help="SFT dataset folder to rate"),
    out: Path = typer.Option(..., "--out", help="output folder: rated rows at or above the threshold"),
    base_url: str = TEACHER_OPTS["base_url"],
    model: str = TEACHER_OPTS["model"],
    min_overall: Optional[float] = typer.Option(None, "--min-overall", help="drop rows whose mean score is below"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with JudgeConfig keys (or a 'judge:' section)"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(8, "--concurrency"),
):
    """Rate each pair 1-5 on helpfulness, correctness, instruction following and honesty; keep the good ones.

    Example: orchard synth judge runs/demo/synth --out runs/demo/judged --base-url http://127.0.0.1:8000/v1
    --model judge --min-overall 3.5
    """
    from .api import judge_stage
    from .methods_config import JudgeConfig

    cfg = _yaml_config(JudgeConfig, config, "judge", min_overall=min_overall, use_cache=False if no_cache else None)
    res = _run(judge_stage, out, cfg, "judge", {"sft": sft}, sft_dir=sft,
               teacher=_teacher(base_url, model, api_key_env, concurrency))
    _summary("synth judge", out, res)


@app.command("preferences")
def preferences_cmd(
    prompts: Path = typer.Argument(..., help="SFT (or preference) folder whose prompts to answer"),
    out: Path = typer.Option(..., "--out", help="output preference dataset folder (prompt/chosen/rejected)"),
    base_url: str = TEACHER_OPTS["base_url"],
    model: str = TEACHER_OPTS["model"],
    num_responses: Optional[int] = typer.Option(None, "--num-responses", help="responses per prompt"),
    judge: Optional[str] = typer.Option(None, "--judge", help="rating | pairwise"),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="chosen minus rejected score at least"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with PreferencesConfig keys"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(8, "--concurrency"),
):
    """Sample several responses per prompt and judge them into chosen/rejected pairs (TRL format).

    Example: orchard synth preferences runs/demo/synth --out runs/demo/prefs --base-url http://127.0.0.1:8000/v1
    --model teacher --num-responses 3 --judge pairwise
    """
    from .api import preferences_stage
    from .methods_config import PreferencesConfig

    cfg = _yaml_config(PreferencesConfig, config, "preferences", num_responses=num_responses, judge=judge,
                       min_margin=min_margin, use_cache=False if no_cache else None)
    res = _run(preferences_stage, out, cfg, "preferences", {"prompts": prompts}, prompts_dir=prompts,
               teacher=_teacher(base_url, model, api_key_env, concurrency))
    _summary("synth preferences", out, res)


@app.command("judge-candidates")
def judge_candidates_cmd(
    candidates: Path = typer.Argument(..., help="candidates folder (prompt + completions from the policy)"),
    out: Path = typer.Option(..., "--out", help="output preference dataset folder"),
    base_url: str = TEACHER_OPTS["base_url"],
    model: str = TEACHER_OPTS["model"],
    min_margin: Optional[float] = typer.Option(None, "--min-margin"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with PreferencesConfig keys"),
    api_key_env: str = typer.Option("OPENAI_API_KEY", "--api-key-env"),
    concurrency: int = typer.Option(8, "--concurrency"),
):
    """RLAIF: judge the policy's completions pairwise in both orders (tie when they disagree) into pairs.

    Example: orchard synth judge-candidates runs/demo/candidates --out runs/demo/rlaif_pairs
    --base-url http://127.0.0.1:8000/v1 --model judge
    """
    from .api import judge_candidates_stage
    from .methods_config import PreferencesConfig

    cfg = _yaml_config(PreferencesConfig, config, "preferences", min_margin=min_margin,
                       use_cache=False if no_cache else None)
    res = _run(judge_candidates_stage, out, cfg, "judge_candidates", {"candidates": candidates},
               candidates_dir=candidates, teacher=_teacher(base_url, model, api_key_env, concurrency))
    _summary("synth judge-candidates", out, res)
