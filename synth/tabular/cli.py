"""``orchard synth tabular``: parse options, call :func:`tabular_stage`, print the gate. No work happens here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchard.errors import GateFailed, OrchardError

from .config import TabularConfig

app = typer.Typer(help="Private synthetic tables with a privacy gate.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Private synthetic tables with a privacy gate (a group, so that `tabular` stays a named command)."""


def _standalone(table: Path, out: Path, config: TabularConfig) -> dict:
    """Run the stage into ``out`` atomically, with its manifest (the spine's one writer)."""
    from orchard.standalone import run_standalone

    from .api import tabular_stage

    return run_standalone(tabular_stage, out, table, name="tabular", config=config, inputs={"table": table})


@app.command("tabular")
def tabular(
    table: Path = typer.Argument(..., help="real table, CSV or Parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset folder to write (train.parquet, privacy report)"),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="YAML overriding SDV's detected metadata"),
    synthesizer: str = typer.Option("auto", "--synthesizer",
                                    help="auto (best of gaussian_copula and tabular_argn)|gaussian_copula|tabular_argn|ctgan|tvae|copulagan"),
    time_budget: Optional[float] = typer.Option(None, "--time-budget", help="auto: seconds for fitting the candidates (default 120)"),
    rows: Optional[int] = typer.Option(None, "--rows", help="synthetic rows (default: as many as the train split)"),
    holdout: float = typer.Option(0.25, "--holdout", help="share of real rows the synthesizer never sees"),
    target: Optional[str] = typer.Option(None, "--target", help="column for the utility test (TSTR)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs for ctgan/tvae/copulagan"),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="differentially private MST (needs smartnoise-synth)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthesize TABLE, measure privacy against a holdout, and write the records only if the gate passes.

    Exit codes: 0 gate passed, 3 gate failed (report in the work folder), 2 bad input.

    Example: orchard synth tabular patients.csv --out data/patients_synth --target readmitted --holdout 0.25
    """
    config = _config(lambda: TabularConfig(
        metadata=str(metadata) if metadata else None, synthesizer=synthesizer, rows=rows, holdout=holdout,
        target=target, epochs=epochs, dp_epsilon=dp_epsilon, seed=seed,
        **({"time_budget_s": time_budget} if time_budget else {}),
    ))
    result = _exit_codes(lambda: _standalone(table, out, config))
    _print_gate(result["gate"])
    typer.echo(f"wrote {result['counts']['train']} synthetic rows ({result['synthesizer']}) to {out / 'train.parquet'}; "
               f"report: {out / 'privacy_report.md'}")


def _exit_codes(run):
    """0 gate passed, 3 gate failed (the report says why), 2 bad input."""
    try:
        return run()
    except GateFailed as e:
        typer.echo(f"gate failed: {e}", err=True)
        raise typer.Exit(3) from None
    except OrchardError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def _print_gate(gate: dict) -> None:
    typer.echo(f"gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    for name, c in gate["checks"].items():
        value = "not measured" if c["value"] is None else (round(c["value"], 4) if isinstance(c["value"], float) else c["value"])
        result = "report only" if c["passed"] is None else ("passed" if c["passed"] else "FAILED")
        thr = "" if c["threshold"] is None else f" (limit {c['threshold']})"
        col = f" [{c['column']}]" if c.get("column") else ""
        typer.echo(f"  {name:<26} {value!s:<12} {result}{thr}{col}")


@app.command("tabular-check")
def tabular_check_cmd(
    train: Path = typer.Argument(..., help="the real rows the other tool learnt from (CSV or Parquet)"),
    synthetic: Path = typer.Argument(..., help="the synthetic table it made (CSV or Parquet)"),
    holdout: Optional[Path] = typer.Option(None, "--holdout", help="real rows kept out of its training (CSV or Parquet)"),
    out: Path = typer.Option(..., "--out", "-o", help="folder for the privacy report"),
    target: Optional[str] = typer.Option(None, "--target", help="column for the utility test (needs --holdout)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Gate a synthetic table made by any tool: the same report and checks as `synth tabular`.

    Exit codes: 0 gate passed, 3 gate failed, 2 bad input. Without --holdout the checks that need unseen
    real rows are reported as not measured and the gate fails.

    Example: orchard synth tabular-check train.csv ctgan_output.csv --holdout holdout.csv --out reports/ctgan
    """
    from .check import tabular_check

    config = _config(lambda: TabularConfig(target=target, seed=seed))

    def run():
        result = tabular_check(train, synthetic, holdout, out, config)
        _print_gate(result["gate"])
        typer.echo(f"report: {result['report']}")
        if not result["gate"]["passed"]:
            raise typer.Exit(3)

    _exit_codes(run)


def _config(make) -> TabularConfig:
    try:
        return make()
    except ValueError as e:  # pydantic's validation error names the bad option
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


def register(parent: typer.Typer) -> None:
    """Mount ``tabular`` and ``tabular-check`` on ``orchard synth`` (the same functions as this module's app)."""
    parent.command("tabular")(tabular)
    parent.command("tabular-check")(tabular_check_cmd)
