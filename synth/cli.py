"""`orchard synth …` commands: parse options, call the stage functions in ``api``, print a summary.

The work is done by ``orchard.synth.api``; the CLI only builds configs and prints. Outputs are written atomically
through ``orchard.standalone.run_standalone`` (which also locks the output against a second writer); teacher calls are
cached in ``<out>/../.work/<out name>/calls.sqlite``, so running the same command again after a crash pays nothing
twice. The exit code says how the run ended (``orchard.errors.OUTCOME_EXIT``).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchard.errors import EXIT_CODES_HELP, OUTCOME_EXIT

app = typer.Typer(help="Grow seed examples into instruction data with a teacher LLM.\n\n" + EXIT_CODES_HELP,
                  no_args_is_help=True, add_completion=False)
console = Console()

# Config fields the command line sets, by the option that sets them: errors name the option the user typed.
_FLAGS = {"num": "--num", "min_num": "--min-num", "seed": "--seed", "method": "--method", "evol.rounds": "--rounds",
          "filters.pii.policy": "--pii", "min_overall": "--min-overall", "num_responses": "--num-responses",
          "judge": "--judge", "min_margin": "--min-margin", "base_url": "--base-url", "model": "--model",
          "max_concurrency": "--concurrency", "timeout_s": "--timeout", "api_key_env": "--api-key-env",
          "budget.max_calls": "--max-calls", "budget.max_tokens": "--max-tokens", "budget.max_cost_usd": "--max-cost",
          "budget.price_per_1k_input": "--price-in", "budget.price_per_1k_output": "--price-out", "budget": "--max-cost"}


def _teacher(t: dict):
    """The TeacherConfig of the teacher options (``TEACHER_OPTS``); a bad value is an InputError naming its option."""
    from pydantic import ValidationError

    from orchard.errors import InputError

    from .config import TeacherConfig

    if not t["base_url"]:
        raise InputError("no teacher endpoint: give --base-url or set OPENAI_BASE_URL", field="--base-url")
    budget = {k: v for k, v in (("max_calls", t["max_calls"]), ("max_tokens", t["max_tokens"]),
                                ("max_cost_usd", t["max_cost"]), ("price_per_1k_input", t["price_in"]),
                                ("price_per_1k_output", t["price_out"])) if v is not None}
    data = {"base_url": t["base_url"], "model": t["model"], "api_key_env": t["api_key_env"],
            "max_concurrency": t["concurrency"], "budget": budget}
    if t["timeout"] is not None:
        data["timeout_s"] = t["timeout"]
    try:
        return TeacherConfig.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(x) for x in first["loc"])
        raise InputError(first["msg"].removeprefix("Value error, "), field=_FLAGS.get(loc, loc)) from None


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
        loc = ".".join(str(x) for x in first["loc"])
        msg = first["msg"].removeprefix("Value error, ")
        if overrides.get(loc) is not None and loc in _FLAGS:  # the command line set it: name the option
            raise InputError(msg, field=_FLAGS[loc]) from None
        raise InputError(msg, path=path, field=loc or None) from None


def _run(fn, out: Path, config, name: str, inputs: dict, **kw) -> dict:
    from orchard.standalone import run_standalone

    from .callpool import TeacherInterrupted

    try:
        return run_standalone(fn, out, name=name, config=config, inputs={k: v for k, v in inputs.items() if v}, **kw)
    except TeacherInterrupted as e:
        # Typer turns a KeyboardInterrupt into a bare exit 130; say what was saved and how to resume.
        Console(stderr=True).print(str(e), style="yellow", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None


def _summary(title: str, out: Path, result: dict) -> None:
    """Print the counts and how the run ended; exit with the outcome's code (0 only when complete)."""
    t = Table(title=title, show_header=True)
    t.add_column("what")
    t.add_column("count", justify="right")
    for k, v in result.get("counts", {}).items():
        t.add_row(k, str(v))
    for k, v in result.get("rejection_reasons", {}).items():
        t.add_row(f"  rejected: {escape(k)}", str(v))
    u = result.get("teacher_usage") or {}
    if u:
        t.add_row("teacher calls (paid)", str(u.get("calls", 0)))
        t.add_row("cache hits (free)", str(u.get("cache_hits", 0)))
        t.add_row("tokens", str(u.get("total_tokens", 0)))
    console.print(t)
    console.print(f"[green]wrote[/green] {escape(str(out))}  (train.parquet, rejected.parquet, report.md)")
    oc = result.get("outcome") or {}
    code = OUTCOME_EXIT.get(oc.get("status", "complete"), 0)
    if oc:
        Console(stderr=True).print(oc["message"], style="red" if code > 3 else "yellow" if code else "green",
                                   markup=False, soft_wrap=True)
    if code:
        raise typer.Exit(code)


TEACHER_OPTS = dict(
    base_url=typer.Option(None, "--base-url", envvar="OPENAI_BASE_URL", show_envvar=True,
                          help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1"),
    model=typer.Option(..., "--model", help="model name at that endpoint"),
    api_key_env=typer.Option("OPENAI_API_KEY", "--api-key-env", help="env var holding the API key"),
    concurrency=typer.Option(8, "--concurrency", min=1, max=1024, help="requests in flight"),
    timeout=typer.Option(None, "--timeout", min=0.001, help="seconds one teacher call may take before it is "
                                                             "retried (default 60)"),
    max_calls=typer.Option(None, "--max-calls", min=1, help="budget: paid teacher calls for this output, earlier "
                                                           "runs included"),
    max_tokens=typer.Option(None, "--max-tokens", min=1, help="budget: prompt + completion tokens for this output, "
                                                             "earlier runs included"),
    max_cost=typer.Option(None, "--max-cost", min=0.0, help="budget: USD for this output, earlier runs included "
                                                            "(needs --price-in/--price-out)"),
    price_in=typer.Option(None, "--price-in", min=0.0, help="USD per 1,000 prompt tokens"),
    price_out=typer.Option(None, "--price-out", min=0.0, help="USD per 1,000 completion tokens"),
)


_TEACHER_TYPES = {"base_url": Optional[str], "model": str, "api_key_env": str, "concurrency": int,
                  "timeout": Optional[float], "max_calls": Optional[int], "max_tokens": Optional[int],
                  "max_cost": Optional[float], "price_in": Optional[float], "price_out": Optional[float]}


def teacher_options(fn):
    """Give a command the teacher options (``TEACHER_OPTS``); it receives them as one dict, ``teacher``."""
    import functools
    import inspect

    sig = inspect.signature(fn)
    extra = [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=TEACHER_OPTS[k], annotation=tp)
             for k, tp in _TEACHER_TYPES.items()]

    @functools.wraps(fn)
    def command(**kw):
        return fn(teacher={k: kw.pop(k) for k in _TEACHER_TYPES}, **kw)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "teacher"]
    command.__signature__ = sig.replace(parameters=params + extra)
    command.__annotations__ = {k: v for k, v in fn.__annotations__.items() if k != "teacher"} | _TEACHER_TYPES
    return command


_DATA_CMD = {"epilog": EXIT_CODES_HELP}


@app.command("seeds")
def seeds_cmd(
    seed_file: Path = typer.Argument(..., help="seed file: .jsonl (Self-Instruct tasks, {instruction,input,output} "
                                               "or {messages}), .csv or .parquet"),
    out: Path = typer.Option(..., "--out", help="output dataset folder"),
    max_seeds: Optional[int] = typer.Option(None, "--max-seeds", min=1, help="keep only the first N"),
):
    """Check a seed file and turn it into a seeds dataset folder.

    Example: orchard synth seeds data/seeds/self_instruct_seed_tasks.jsonl --out runs/demo/seeds
    """
    from .api import seeds_stage
    from .methods_config import SeedsConfig

    res = _run(seeds_stage, out, SeedsConfig(max_seeds=max_seeds), "seeds", {"seeds": seed_file}, seed_path=seed_file)
    console.print(f"[green]{res['counts']['train']} seeds[/green] ({res['counts']['classification']} classification) "
                  f"→ {escape(str(out))}")


NUM_HELP = "pairs to write: generation goes on until this many pass every filter, or a cap stops it"
MIN_NUM_HELP = "fewest pairs that count as success (default --num); fewer exits 4"


@app.command("instructions", **_DATA_CMD)
@teacher_options
def instructions_cmd(
    seeds: Optional[Path] = typer.Argument(None, help="seed file or seeds folder (not needed for --method grounded)"),
    out: Path = typer.Option(..., "--out", help="output SFT dataset folder"),
    method: Optional[str] = typer.Option(None, "--method", help="self_instruct | evol | grounded | magpie"),
    num: Optional[int] = typer.Option(None, "--num", min=1, help=NUM_HELP),
    min_num: Optional[int] = typer.Option(None, "--min-num", min=0, help=MIN_NUM_HELP),
    no_cache: bool = typer.Option(False, "--no-cache", help="call the teacher afresh (calls are still logged)"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SynthConfig keys (or a 'synth:' section)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="random seed (same seed: same requests, cache hits)"),
    documents: Optional[Path] = typer.Option(None, "--documents", help="grounded: folder of .txt/.md files"),
    table: Optional[Path] = typer.Option(None, "--table", help="grounded: tabular records folder (gate passed)"),
    eval_set: Optional[List[Path]] = typer.Option(None, "--eval-set", help="decontaminate against this eval set"),
    pii: Optional[str] = typer.Option(None, "--pii", help="mask | drop"),
    semantic: bool = typer.Option(False, "--semantic-dedup", help="also drop semantic duplicates (embeddings)"),
    teacher: dict = None,
):
    """Generate instruction/response pairs from seeds with a teacher (Self-Instruct, Evol-Instruct or grounded).

    Example: orchard synth instructions data/seeds/self_instruct_seed_tasks.jsonl --out runs/demo/synth
    --base-url http://127.0.0.1:8000/v1 --model teacher --method self_instruct --num 200 --max-calls 2000
    """
    from .api import instructions_stage
    from .methods_config import SynthConfig

    cfg = _yaml_config(SynthConfig, config, "synth", method=method, num=num, min_num=min_num, seed=seed,
                       use_cache=False if no_cache else None,
                       **{"grounded.documents": str(documents) if documents else None,
                          "grounded.table": str(table) if table else None,
                          "filters.decontam.eval_sets": [str(e) for e in eval_set] if eval_set else None,
                          "filters.pii.policy": pii, "filters.semantic.enabled": True if semantic else None})
    tc = _teacher(teacher)
    res = _run(instructions_stage, out, cfg, "synth", {"seeds": seeds, "documents": documents, "table": table},
               seeds_dir=seeds, teacher=tc)
    _summary(f"synth {cfg.method}", out, res)


@app.command("evolve", **_DATA_CMD)
@teacher_options
def evolve_cmd(
    seeds: Path = typer.Argument(..., help="seed file or seeds/SFT folder whose prompts to evolve"),
    out: Path = typer.Option(..., "--out", help="output SFT dataset folder"),
    num: Optional[int] = typer.Option(None, "--num", min=1, help=NUM_HELP),
    min_num: Optional[int] = typer.Option(None, "--min-num", min=0, help=MIN_NUM_HELP),
    rounds: Optional[int] = typer.Option(None, "--rounds", min=1, help="evolution depth"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SynthConfig keys"),
    seed: Optional[int] = typer.Option(None, "--seed"),
    teacher: dict = None,
):
    """Evol-Instruct: make prompts harder (constraints, depth, concreteness, reasoning) or new (breadth).

    Example: orchard synth evolve runs/demo/seeds --out runs/demo/evolved --base-url http://127.0.0.1:8000/v1
    --model teacher --rounds 2 --num 100
    """
    from .api import instructions_stage
    from .methods_config import SynthConfig

    cfg = _yaml_config(SynthConfig, config, "synth", method="evol", num=num, min_num=min_num, seed=seed,
                       use_cache=False if no_cache else None, **{"evol.rounds": rounds})
    tc = _teacher(teacher)
    res = _run(instructions_stage, out, cfg, "evolve", {"seeds": seeds}, seeds_dir=seeds, teacher=tc)
    _summary("synth evolve", out, res)


@app.command("judge", **_DATA_CMD)
@teacher_options
def judge_cmd(
    sft: Path = typer.Argument(..., help="SFT dataset folder to rate"),
    out: Path = typer.Option(..., "--out", help="output folder: rated rows at or above the threshold"),
    min_overall: Optional[float] = typer.Option(None, "--min-overall", help="drop rows whose mean score is below"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with JudgeConfig keys (or a 'judge:' section)"),
    teacher: dict = None,
):
    """Rate each pair 1-5 on helpfulness, correctness, instruction following and honesty; keep the good ones.

    Example: orchard synth judge runs/demo/synth --out runs/demo/judged --base-url http://127.0.0.1:8000/v1
    --model judge --min-overall 3.5
    """
    from .api import judge_stage
    from .methods_config import JudgeConfig

    cfg = _yaml_config(JudgeConfig, config, "judge", min_overall=min_overall, use_cache=False if no_cache else None)
    tc = _teacher(teacher)
    res = _run(judge_stage, out, cfg, "judge", {"sft": sft}, sft_dir=sft, teacher=tc)
    _summary("synth judge", out, res)


@app.command("preferences", **_DATA_CMD)
@teacher_options
def preferences_cmd(
    prompts: Path = typer.Argument(..., help="SFT (or preference) folder whose prompts to answer"),
    out: Path = typer.Option(..., "--out", help="output preference dataset folder (prompt/chosen/rejected)"),
    num_responses: Optional[int] = typer.Option(None, "--num-responses", help="responses per prompt"),
    judge: Optional[str] = typer.Option(None, "--judge", help="rating | pairwise"),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="chosen minus rejected score at least"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with PreferencesConfig keys"),
    teacher: dict = None,
):
    """Sample several responses per prompt and judge them into chosen/rejected pairs (TRL format).

    Example: orchard synth preferences runs/demo/synth --out runs/demo/prefs --base-url http://127.0.0.1:8000/v1
    --model teacher --num-responses 3 --judge pairwise
    """
    from .api import preferences_stage
    from .methods_config import PreferencesConfig

    cfg = _yaml_config(PreferencesConfig, config, "preferences", num_responses=num_responses, judge=judge,
                       min_margin=min_margin, use_cache=False if no_cache else None)
    tc = _teacher(teacher)
    res = _run(preferences_stage, out, cfg, "preferences", {"prompts": prompts}, prompts_dir=prompts, teacher=tc)
    _summary("synth preferences", out, res)


@app.command("judge-candidates", **_DATA_CMD)
@teacher_options
def judge_candidates_cmd(
    candidates: Path = typer.Argument(..., help="candidates folder (prompt + completions from the policy)"),
    out: Path = typer.Option(..., "--out", help="output preference dataset folder"),
    min_margin: Optional[float] = typer.Option(None, "--min-margin"),
    no_cache: bool = typer.Option(False, "--no-cache"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with PreferencesConfig keys"),
    teacher: dict = None,
):
    """RLAIF: judge the policy's completions pairwise in both orders (tie when they disagree) into pairs.

    Example: orchard synth judge-candidates runs/demo/candidates --out runs/demo/rlaif_pairs
    --base-url http://127.0.0.1:8000/v1 --model judge
    """
    from .api import judge_candidates_stage
    from .methods_config import PreferencesConfig

    cfg = _yaml_config(PreferencesConfig, config, "preferences", min_margin=min_margin,
                       use_cache=False if no_cache else None)
    tc = _teacher(teacher)
    res = _run(judge_candidates_stage, out, cfg, "judge_candidates", {"candidates": candidates},
               candidates_dir=candidates, teacher=tc)
    _summary("synth judge-candidates", out, res)
