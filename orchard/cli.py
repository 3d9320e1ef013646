"""The `orchard` command: a thin Typer layer over the Python API. It parses, calls, and prints; nothing more."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from orchard.errors import EXIT_CODES_HELP, GATE_FAILED_EXIT, GateFailed, OrchardError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="orchard",
    help="Grow scarce domain data into aligned small models: synth → review → align.\n\n"
    "Example: orchard run recipes/quickstart.yaml\n\n" + EXIT_CODES_HELP,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# (sub-command name, module, attribute, help)
SUBAPPS = [
    ("synth", "orchard.synth.cli", "app", "Grow seed examples into instruction data with a teacher LLM; private tables."),
    ("review", "orchard.review.cli", "app", "Human review on Argilla: serve, push, status, pull."),
    ("align", "orchard.align.cli", "app", "SFT, DPO and RLAIF on (Q)LoRA adapters; evaluation and export."),
    ("models", "orchard.cli_models", "app", "Build offline models: tiny test models and the quickstart teacher."),
]


@app.callback()
def root(verbose: bool = typer.Option(False, "--verbose", help="show orchard's debug lines and the libraries' "
                                      "warnings, logs and progress bars (also ORCHARD_VERBOSE=1)")):
    from orchard.log import setup

    setup(verbose)  # once, before any command: the console shows orchard's progress and summary only


_MOUNTED = False


def _mount_subapps() -> None:
    """Attach the packages' Typer apps (once). synth's app also gets the call log and tabular commands."""
    global _MOUNTED
    if _MOUNTED:
        return
    for name, module, attr, help_text in SUBAPPS:
        sub = getattr(importlib.import_module(module), attr)
        if name == "synth":
            from orchard.synth import cli_calls
            from orchard.synth.tabular import cli as tabular_cli

            cli_calls.register(sub)
            tabular_cli.register(sub)
        app.add_typer(sub, name=name, help=help_text)
    _MOUNTED = True


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe key: --set sft.max_steps=20"),
    from_stage: Optional[str] = typer.Option(None, "--from", help="start at this stage (re-runs it even if unchanged)"),
    to_stage: Optional[str] = typer.Option(None, "--to", help="stop after this stage"),
    force: bool = typer.Option(False, "--force", help="re-run every selected stage even if unchanged"),
    runs_dir: Optional[Path] = typer.Option(None, "--runs-dir", help="where run folders go (default: recipe's runs_dir)"),
):
    """Run a recipe's stages in order; unchanged stages are skipped, a killed stage resumes.

    A stage that wrote fewer rows than its min_num (synth.min_num, default synth.num) stops the run; one that lost
    items to the teacher after every retry does not, and is run again (from the call cache) next time.

    Example: orchard run recipes/quickstart.yaml --set sft.max_steps=40 --to sft
    """
    from orchard.recipe import load_recipe
    from orchard.runner import Runner

    rec = load_recipe(recipe, set_ or [])
    runner = Runner(rec, runs_dir=runs_dir)
    try:
        outcomes = runner.run(from_stage=from_stage, to_stage=to_stage, force=force)
    except KeyboardInterrupt as e:
        # Typer would exit 130 silently; a teacher stopped by Ctrl-C says what it saved (TeacherInterrupted).
        err_console.print(str(e) or "interrupted: finished stages are kept; run the same command to resume",
                          style="yellow", markup=False, soft_wrap=True)
        raise typer.Exit(130) from None
    table = Table(title=f"orchard run {rec.name}")
    for col in ("stage", "status", "seconds", "output"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(o.stage, o.status, f"{o.seconds:.1f}", escape(str(runner.stage_dir(o.stage))))
    console.print(table)
    console.print(f"Run folder: [bold]{escape(str(runner.run_dir))}[/bold]   "
                  f"report: [bold]{escape(str(runner.run_dir / 'report.md'))}[/bold]")
    if any(o.status == "pending" for o in outcomes):
        p = next(o for o in outcomes if o.status == "pending")
        console.print(f"[yellow]Stage '{p.stage}' is waiting: {escape(p.result.get('message', ''))}\n"
                      f"Resume later with: orchard run {escape(str(recipe))} --from {p.stage}[/yellow]")
    for o in outcomes:
        if o.exit_code:
            err_console.print(f"{o.stage}: {o.message}", style="red" if o.exit_code > 3 else "yellow",
                              markup=False, soft_wrap=True)
    code = max((o.exit_code for o in outcomes), default=0)
    if code:
        raise typer.Exit(code)


@app.command("validate")
def validate_cmd(
    recipe: Path = typer.Argument(..., help="recipe YAML file"),
    set_: Optional[List[str]] = typer.Option(None, "--set", help="override a recipe key"),
):
    """Check a recipe against the schema without running anything.

    Example: orchard validate recipes/quickstart.yaml
    """
    from orchard.recipe import load_recipe, stages_in

    rec = load_recipe(recipe, set_ or [])
    console.print(f"[green]ok[/green]: {rec.name}: stages {', '.join(stages_in(rec))}")


@app.command("report")
def report_cmd(run_dir: Path = typer.Argument(..., help="a run folder, e.g. runs/quickstart")):
    """Rebuild a run's report.md from its stage manifests.

    Example: orchard report runs/quickstart
    """
    from orchard.report import completed_stages, write_run_report

    path = write_run_report(run_dir, completed_stages(run_dir))
    console.print(f"report: {path}")


@app.command("show")
def show_cmd(stage_dir: Path = typer.Argument(..., help="a stage folder, e.g. runs/quickstart/synth")):
    """Print a stage's manifest (inputs, config, versions, counts).

    Example: orchard show runs/quickstart/sft
    """
    from orchard.dataio import read_manifest

    m = read_manifest(stage_dir)
    if not m:
        raise OrchardError(f"{stage_dir}: no manifest.json (not a stage output folder?)")
    console.print_json(json.dumps(m, default=str))


def main() -> None:
    _mount_subapps()
    try:
        app()
    except GateFailed as e:
        # A stage stopped on its privacy gate: its own code (3 is "items lost" for a run; `synth tabular` and
        # `tabular-check` use 3, having no items to lose); 2 stays bad input.
        err_console.print(f"[red]gate failed:[/red] {escape(str(e))}", highlight=False)
        sys.exit(GATE_FAILED_EXIT)
    except OrchardError as e:
        # Not markup: "[instruction]" in "file:3 [instruction]: ..." is a field name, not a style.
        err_console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted: finished stages are kept; run the same command to resume[/yellow]")
        sys.exit(130)


if __name__ == "__main__":
    main()
