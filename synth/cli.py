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

# Config fields of the methods that the command line sets, by the option that sets them: errors name the option
# the user typed. (The teacher's are in TEACHER_FLAGS.)
_FLAGS = {"num": "--num", "min_num": "--min-num", "seed": "--seed", "method": "--method", "evol.rounds": "--rounds",
          "filters.pii.policy": "--pii", "min_overall": "--min-overall", "num_responses": "--num-responses",
          "judge": "--judge", "min_margin": "--min-margin"}


def _yaml_config(cls, path: Optional[Path], section: Optional[str] = None, **overrides):
    """A config from an optional YAML file (whole file, or its ``section`` key), then CLI overrides.

    A value the command line set that fails is named by its option; problems in the file are listed together, each
    as ``file:line: 'key': expected`` (``orchard.schema.validate``)."""
    from pydantic import ValidationError

    from orchard.errors import InputError
    from orchard.schema import load_yaml, validate

    doc, data, prefix = None, {}, ()
    if path is not None:
        doc = load_yaml(path, what="config file")
        data = doc.data
        if section and isinstance(data.get(section), dict):
            data, prefix = data[section], (section,)
    _put_given(data, overrides)
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        loc, msg = _first_error(e)
        if overrides.get(loc) is not None and loc in _FLAGS:  # the command line set it: name the option
            raise InputError(msg, field=_FLAGS[loc]) from None
        if not loc:  # a rule across fields (min_num above num): no one key to point at
            raise InputError(msg, path=path) from None
    return validate(cls, data, doc=doc, prefix=prefix, what="config")


def _first_error(e) -> tuple[str, str]:
    """The dotted key and the message of a ValidationError's first problem (to name the option that set it)."""
    first = e.errors()[0]
    return ".".join(str(x) for x in first["loc"]), first["msg"].removeprefix("Value error, ")


def _put_given(data: dict, values: dict) -> None:
    """Each dotted key of ``values`` whose value was given (not None) into ``data``."""
    for dotted, v in values.items():
        if v is not None:
            _put(data, dotted, v)


def _put(data: dict, dotted: str, value) -> None:
    """``data["a"]["b"] = value`` for ``a.b``, making the mappings on the way."""
    *parents, name = dotted.split(".")
    for p in parents:
        data = data.setdefault(p, {})
    data[name] = value


def _run(fn, out: Path, config, name: str, inputs: dict, **kw) -> dict:
    from orchard.standalone import run_standalone

    from .teacher import TeacherInterrupted

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


# The teacher flags of every command that calls a teacher, declared once: option -> TeacherConfig field (dotted:
# inside ``budget``). Each option's type, default, bounds and help come from its field, so the flags and the recipe's
# ``teacher:`` block cannot drift apart.
TEACHER_FLAGS = {
    "--base-url": "base_url", "--model": "model", "--api-key-env": "api_key_env", "--concurrency": "max_concurrency",
    "--timeout": "timeout_s", "--max-calls": "budget.max_calls", "--max-tokens": "budget.max_tokens",
    "--max-cost": "budget.max_cost_usd", "--price-in": "budget.price_per_1k_input",
    "--price-out": "budget.price_per_1k_output",
}
# What a flag adds to its field: --base-url falls back on $OPENAI_BASE_URL (checked in ``teacher_config``, with a
# message saying so); --model must be given.
_FLAG_EXTRA = {"--base-url": dict(envvar="OPENAI_BASE_URL", show_envvar=True), "--model": dict(default=...)}


def _teacher_field(path: str):
    """The pydantic FieldInfo of a dotted TeacherConfig field."""
    from .teacher import TeacherConfig

    model, *parents, name = [TeacherConfig, *path.split(".")]
    for p in parents:
        model = model.model_fields[p].annotation
    return model.model_fields[name]


def _teacher_option(flag: str, path: str):
    """``(parameter name, annotation, typer.Option)`` of one teacher flag, from its field."""
    import annotated_types as at

    f = _teacher_field(path)
    kw: dict = {"default": f.default, "help": ("budget: " if path.startswith("budget.") else "") + f.description}
    for m in f.metadata:
        if isinstance(m, at.Ge):
            kw["min"] = m.ge
        elif isinstance(m, at.Le):
            kw["max"] = m.le
        elif isinstance(m, at.Gt):
            kw["callback"] = _above(m.gt)  # Typer's min is inclusive
    kw.update(_FLAG_EXTRA.get(flag, {}))
    annotation = str if kw["default"] is ... else f.annotation
    return flag[2:].replace("-", "_"), annotation, typer.Option(kw.pop("default"), flag, **kw)


def _above(bound):
    def check(v):
        if v is not None and not v > bound:
            raise typer.BadParameter(f"{v} is not above {bound}")
        return v

    return check


def teacher_options(fn):
    """Give a command the teacher options (``TEACHER_FLAGS``); it receives their values as one dict, ``teacher``
    (field path -> value), for ``teacher_config``."""
    import functools
    import inspect

    opts = {flag: _teacher_option(flag, path) for flag, path in TEACHER_FLAGS.items()}
    sig = inspect.signature(fn)
    extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=tp)
             for name, tp, opt in opts.values()]

    @functools.wraps(fn)
    def command(**kw):
        return fn(teacher={TEACHER_FLAGS[flag]: kw.pop(name) for flag, (name, _, _) in opts.items()}, **kw)

    params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in sig.parameters.values() if p.name != "teacher"]
    command.__signature__ = sig.replace(parameters=params + extra)
    command.__annotations__ = ({k: v for k, v in fn.__annotations__.items() if k != "teacher"}
                               | {name: tp for name, tp, _ in opts.values()})
    return command


def teacher_config(values: dict):
    """The TeacherConfig of the teacher options' values (``teacher_options``); a bad value is an InputError naming
    its option."""
    from pydantic import ValidationError

    from orchard.errors import InputError

    from .teacher import TeacherConfig

    if not values["base_url"]:
        raise InputError("no teacher endpoint: give --base-url or set OPENAI_BASE_URL", field="--base-url")
    data: dict = {}
    _put_given(data, values)
    try:
        return TeacherConfig.model_validate(data)
    except ValidationError as e:
        loc, msg = _first_error(e)
        # A rule across the budget's fields (max_cost_usd needs prices) is about --max-cost.
        flags = {path: flag for flag, path in TEACHER_FLAGS.items()} | {"budget": "--max-cost"}
        raise InputError(msg, field=flags.get(loc, loc)) from None


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
    tc = teacher_config(teacher)
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
    tc = teacher_config(teacher)
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
    tc = teacher_config(teacher)
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
    tc = teacher_config(teacher)
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
    tc = teacher_config(teacher)
    res = _run(judge_candidates_stage, out, cfg, "judge_candidates", {"candidates": candidates},
               candidates_dir=candidates, teacher=tc)
    _summary("synth judge-candidates", out, res)
