"""``orchard synth tabular``: parse options, call :func:`tabular_stage`, print the gate. No work happens here."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from orchard.errors import OrchardError

from .config import TabularConfig

app = typer.Typer(help="Private synthetic tables with a privacy gate.", no_args_is_help=True, add_completion=False)


@app.callback()
def _group() -> None:
    """Private synthetic tables with a privacy gate (a group, so that `tabular` stays a named command)."""


def _standalone(table: Path, out: Path, config: TabularConfig) -> dict:
    """Run the stage into ``out`` atomically, with its manifest; through the spine's runner when present."""
    from .api import tabular_stage

    try:
        from orchard.runner import run_standalone  # the spine's runner (temp folder, rename, manifest)
    except ImportError:
        run_standalone = None
    if run_standalone is not None:
        return run_standalone(tabular_stage, out, table, name="tabular", config=config, inputs={"table": table})
    from orchard.dataio import MANIFEST, atomic_dir, atomic_write_json

    work = out.parent / ".work" / out.name
    with atomic_dir(out) as tmp:
        result = tabular_stage(table, tmp, work, config)
        atomic_write_json(tmp / MANIFEST, {"stage": "tabular", **result})
    return result


@app.command("tabular")
def tabular(
    table: Path = typer.Argument(..., help="real table, CSV or Parquet"),
    out: Path = typer.Option(..., "--out", "-o", help="dataset folder to write (train.parquet, privacy report)"),
    metadata: Optional[Path] = typer.Option(None, "--metadata", help="YAML overriding SDV's detected metadata"),
    synthesizer: str = typer.Option("gaussian_copula", "--synthesizer", help="gaussian_copula|ctgan|tvae|copulagan"),
    rows: Optional[int] = typer.Option(None, "--rows", help="synthetic rows (default: as many as the train split)"),
    holdout: float = typer.Option(0.25, "--holdout", help="share of real rows the synthesizer never sees"),
    target: Optional[str] = typer.Option(None, "--target", help="column for the utility test (TSTR)"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="epochs for ctgan/tvae/copulagan"),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="differentially private MST (needs smartnoise-synth)"),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Synthesize TABLE, measure privacy against a holdout, and write the records only if the gate passes.

    Example: orchard synth tabular patients.csv --out data/patients_synth --target readmitted --holdout 0.25
    """
    try:
        config = TabularConfig(
            metadata=str(metadata) if metadata else None, synthesizer=synthesizer, rows=rows, holdout=holdout,
            target=target, epochs=epochs, dp_epsilon=dp_epsilon, seed=seed,
        )
    except ValueError as e:  # pydantic's validation error names the bad option
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    try:
        result = _standalone(table, out, config)
    except OrchardError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    gate = result["gate"]
    typer.echo(f"gate: {'PASSED' if gate['passed'] else 'FAILED'}")
    for name, c in gate["checks"].items():
        thr = "report only" if c["threshold"] is None else c["threshold"]
        value = c["value"] if not isinstance(c["value"], float) else round(c["value"], 4)
        typer.echo(f"  {name:<26} {value!s:<10} threshold {thr}")
    typer.echo(f"wrote {result['counts']['train']} synthetic rows to {out / 'train.parquet'}; report: {out / 'privacy_report.md'}")
