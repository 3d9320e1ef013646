"""`orchard align …`: parse options, call align's Python API, print a summary. No training logic here."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import typer

from orchard.errors import OrchardError

app = typer.Typer(
    help="SFT, DPO and RLAIF sampling on (Q)LoRA adapters; evaluation and export.\n\n"
    "Example: orchard align sft data/split --base-model models/tiny --out runs/demo/sft",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

def _help(model: str, name: str) -> str:
    """An option's help, from the config field it sets (one description, in align/config.py, for YAML and flag)."""
    import typing

    from . import config

    field = getattr(config, model).model_fields[name]
    choices = typing.get_args(field.annotation) if typing.get_origin(field.annotation) is typing.Literal else ()
    text = field.description or ""
    if choices and not all(c in text for c in choices):
        text = f"{' | '.join(choices)}" + (f": {text}" if text else "")
    return f"{text} ({model}.{name})" if text else f"{model}.{name}"


ACCEL_HELP = "re-launch through `accelerate launch --config_file CONFIG` (see recipes/accelerate/)"


def _rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")))


def _relaunch(config: Path, num_processes: Optional[int]) -> None:
    """Run this same command again under `accelerate launch`, minus the --accelerate option."""
    argv = sys.argv[1:]
    rest, skip = [], False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in ("--accelerate", "--num-processes"):
            skip = True
            continue
        if a.startswith("--accelerate=") or a.startswith("--num-processes="):
            continue
        rest.append(a)
    # sys.argv[0] may be the `orchard` script: drop everything before the align sub-command.
    if "align" in rest:
        rest = rest[rest.index("align") + 1:]
    cmd, env = launch_command(config, num_processes, rest)
    typer.echo("+ " + " ".join(cmd), err=True)
    raise typer.Exit(subprocess.call(cmd, env=env))


def launch_command(config: Path, num_processes: Optional[int], args: list[str]) -> tuple[list[str], dict]:
    """The command that re-runs ``orchard align ARGS`` distributed as ``config`` says.

    Each rank runs the ``orchard`` command itself (``-m orchard.cli``), not this module, so that its console is
    set up the same way (quiet libraries, ``ORCHARD_VERBOSE`` honoured) and its errors read the same.

    accelerate's MULTI_CPU launcher needs mpirun and a hostfile; for several CPU processes on one host we
    start torch.distributed.run instead (gloo backend), with accelerate told to stay on the CPU.
    """
    from orchard.schema import load_yaml

    try:
        acc = load_yaml(config, what="accelerate config").data  # accelerate's own keys: read, not validated here
    except (OSError, OrchardError) as e:
        raise typer.BadParameter(f"cannot read accelerate config {config}: {e}")
    n = num_processes or int(acc.get("num_processes", 1))
    env = dict(os.environ)
    if acc.get("use_cpu") and acc.get("distributed_type") == "MULTI_CPU" and not acc.get("mpirun_config"):
        env["ACCELERATE_USE_CPU"] = "true"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n),
               "--master_addr", str(acc.get("main_process_ip", "127.0.0.1")),
               "--master_port", str(acc.get("main_process_port", 29500)), "-m", "orchard.cli", "align", *args]
        return cmd, env
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if num_processes:
        cmd += ["--num_processes", str(num_processes)]
    return cmd + ["-m", "orchard.cli", "align", *args], env


def _run(fn, out: Path, *args, name: str, config, inputs: dict, work_dir: Optional[Path], **kw) -> dict:
    """Standalone stage run: atomic output + manifest on the main process; other ranks write nowhere."""
    if _rank() > 0:
        work = Path(work_dir) if work_dir else out.parent / ".work" / out.name
        tmp = Path(tempfile.mkdtemp(prefix="orchard-rank-"))
        try:
            return fn(*args, out_dir=tmp, work_dir=work, config=config, **kw)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    from orchard.standalone import run_standalone

    return run_standalone(fn, out, *args, name=name, config=config, inputs=inputs, work_dir=work_dir, **kw)


def _print(result: dict) -> None:
    if _rank() == 0:
        typer.echo(json.dumps({k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k in (
            "final_eval", "perplexity", "loss", "win_rates", "comparisons")}, indent=2, default=str))


def _config(cls, path: Optional[Path], overrides: dict):
    """The ``--config`` YAML (if any) with the command's flags on top, validated: errors name file, line, key."""
    from orchard.schema import load_yaml, validate

    doc = load_yaml(path, what="config file") if path is not None else None
    data = doc.data if doc is not None else {}
    data.update({k: v for k, v in overrides.items() if v is not None})  # in place: the doc keeps its key lines
    return validate(cls, data, doc=doc, what=f"{cls.__name__} config")


def _fail(e: OrchardError) -> None:
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(2)


@app.command("sft")
def sft_cmd(
    data: Path = typer.Argument(..., help="dataset folder with train.parquet (and test.parquet) in messages format"),
    out: Path = typer.Option(..., "--out", help="output policy folder"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SFTConfig fields"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help=_help("SFTConfig", "base_model")),
    method: Optional[str] = typer.Option(None, "--method", help=_help("SFTConfig", "method")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=_help("SFTConfig", "max_steps")),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir", help="checkpoints (default: OUT/../.work/NAME)"),
    accelerate: Optional[Path] = typer.Option(None, "--accelerate", help=ACCEL_HELP),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="with --accelerate"),
):
    """Supervised fine-tuning (QLoRA by default); resumes from the last checkpoint when re-run.

    Example: orchard align sft runs/demo/split --base-model models/tiny --max-steps 30 --out runs/demo/sft
    """
    if accelerate:
        _relaunch(accelerate, num_processes)
    from .config import SFTConfig
    from .sft import sft_stage

    try:
        cfg = _config(SFTConfig, config, {"base_model": base_model, "method": method, "max_steps": max_steps})
        _print(_run(sft_stage, out, data, name="sft", config=cfg, inputs={"data": data}, work_dir=work_dir))
    except OrchardError as e:
        _fail(e)


@app.command("dpo")
def dpo_cmd(
    pairs: Path = typer.Argument(..., help="preference folder: prompt/chosen/rejected (train, optional test)"),
    sft: Path = typer.Option(..., "--sft", help="policy folder to start from (SFT or a previous DPO output)"),
    out: Path = typer.Option(..., "--out"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with DPOConfig fields"),
    algorithm: Optional[str] = typer.Option(None, "--algorithm", help=_help("DPOConfig", "algorithm")),
    loss_type: Optional[str] = typer.Option(None, "--loss-type", help=_help("DPOConfig", "loss_type")),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help=_help("DPOConfig", "max_steps")),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir"),
    accelerate: Optional[Path] = typer.Option(None, "--accelerate", help=ACCEL_HELP),
    num_processes: Optional[int] = typer.Option(None, "--num-processes", help="with --accelerate"),
):
    """Preference optimisation on top of the SFT adapter (reference = the SFT policy).

    Example: orchard align dpo runs/demo/preferences --sft runs/demo/sft --loss-type ipo --out runs/demo/dpo
    """
    if accelerate:
        _relaunch(accelerate, num_processes)
    from .config import DPOConfig
    from .dpo import dpo_stage

    try:
        cfg = _config(DPOConfig, config, {"algorithm": algorithm, "loss_type": loss_type, "max_steps": max_steps})
        _print(_run(dpo_stage, out, pairs, sft, name="dpo", config=cfg, inputs={"pairs": pairs, "sft": sft},
                    work_dir=work_dir))
    except OrchardError as e:
        _fail(e)


@app.command("sample")
def sample_cmd(
    prompts: Path = typer.Argument(..., help="folder of prompts (prompt or messages column)"),
    policy: Path = typer.Option(..., "--policy", help="policy folder (SFT or DPO output)"),
    out: Path = typer.Option(..., "--out"),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with SampleConfig fields"),
    n: Optional[int] = typer.Option(None, "-n", "--num-completions", help=_help("SampleConfig", "num_completions")),
    mode: str = typer.Option("candidates", "--mode", help="candidates (for a judge) | reference_vs_policy (pairs)"),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir"),
):
    """Sample completions from a policy: RLAIF candidates, or SPIN-style pairs against the reference answers.

    Example: orchard align sample runs/demo/split --policy runs/demo/sft -n 4 --out runs/demo/candidates
    """
    from .config import SampleConfig
    from .sample import policy_pairs_stage, sample_stage

    try:
        cfg = _config(SampleConfig, config, {"num_completions": n})
        if mode == "reference_vs_policy":
            res = _run(policy_pairs_stage, out, prompts, policy, name="policy_pairs", config=cfg,
                       inputs={"data": prompts, "sft": policy}, work_dir=work_dir)
        elif mode == "candidates":
            res = _run(sample_stage, out, prompts, policy, name="sample", config=cfg,
                       inputs={"prompts": prompts, "policy": policy}, work_dir=work_dir)
        else:
            raise typer.BadParameter("--mode must be candidates or reference_vs_policy")
        _print(res)
    except OrchardError as e:
        _fail(e)


app.command("rlaif-sample", help="Alias of `sample` (RLAIF candidates for synth's pairwise judge).\n\n"
            "Example: orchard align rlaif-sample runs/demo/split --policy runs/demo/dpo --out runs/demo/cand")(sample_cmd)


@app.command("eval")
def eval_cmd(
    data: Path = typer.Argument(..., help="SFT dataset folder with the held-out split"),
    sft: Path = typer.Option(..., "--sft"),
    out: Path = typer.Option(..., "--out"),
    dpo: Optional[Path] = typer.Option(None, "--dpo", help="preference-tuned policy folder"),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="preference folder with held-out pairs"),
    general: Optional[Path] = typer.Option(None, "--general", help=_help("EvalConfig", "general_dir")),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML with EvalConfig fields"),
    work_dir: Optional[Path] = typer.Option(None, "--work-dir"),
):
    """Held-out loss/perplexity, preference accuracy and margins, forgetting; writes report.md and plots.

    Example: orchard align eval runs/demo/split --sft runs/demo/sft --dpo runs/demo/dpo --pairs runs/demo/preferences --out runs/demo/eval
    """
    from .config import EvalConfig
    from .evaluate import eval_stage

    try:
        cfg = _config(EvalConfig, config, {"general_dir": str(general) if general else None})
        inputs = {"data": data, "sft": sft, **({"dpo": dpo} if dpo else {}), **({"pairs": pairs} if pairs else {})}
        res = _run(eval_stage, out, data, pairs, sft, dpo, name="eval", config=cfg, inputs=inputs, work_dir=work_dir)
        _print(res)
        typer.echo(f"report: {out / 'report.md'}")
    except OrchardError as e:
        _fail(e)


@app.command("export")
def export_cmd(
    adapter: Path = typer.Argument(..., help="policy folder (or PEFT adapter folder) to merge"),
    out: Path = typer.Option(..., "--out", help="folder for the merged model (safetensors)"),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="default: the one recorded with the adapter"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | float32 | bfloat16 | float16"),
):
    """Merge a LoRA adapter into its base model and save a standalone model (merge_and_unload, safetensors).

    Example: orchard align export runs/demo/dpo --out models/demo-merged
    """
    from .export import export_merged

    try:
        _print(export_merged(base_model, adapter, out, dtype=dtype))
    except OrchardError as e:
        _fail(e)


if __name__ == "__main__":
    app()
