"""`orchard models` CLI: parses and prints; the work is done by orchard.models / orchard.teacher_train."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from orchard.cli_models import app

runner = CliRunner()


def test_help_texts_have_examples():
    for cmd in ("tiny", "teacher"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0, r.output
        assert f"orchard models {cmd}" in r.output  # an example line


def test_tiny_command_builds_a_loadable_model(tmp_path):
    from transformers import AutoConfig

    r = runner.invoke(app, ["tiny", str(tmp_path / "m"), "--hidden", "32", "--heads", "2", "--layers", "1"])
    assert r.exit_code == 0, r.output
    cfg = AutoConfig.from_pretrained(tmp_path / "m")
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers) == (32, 2, 1)


def test_teacher_command_trains_from_seed_file(tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    tasks = [{"instruction": f"Write a short poem about topic number {i}.", "input": "", "output": f"Poem {i}."}
             for i in range(12)]
    seeds.write_text("\n".join(json.dumps(t) for t in tasks) + "\n")
    r = runner.invoke(app, ["teacher", str(tmp_path / "t"), "--seeds", str(seeds), "--n", "40",
                            "--seconds", "30", "--max-steps", "5"])
    assert r.exit_code == 0, r.output
    text = r.stdout  # stderr carries progress bars
    out = json.loads(text[text.index("{\n"): text.rindex("}") + 1])
    assert out["steps"] == 5 and out["examples"] > 0
    assert (tmp_path / "t" / "model.safetensors").exists()
