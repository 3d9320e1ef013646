"""`orchard synth` commands (the synth Typer app) end to end against the fake teacher."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from fake_teacher import FakeTeacher  # noqa: E402
from synth_responder import responder  # noqa: E402

from orchard.dataio import read_manifest, read_rows  # noqa: E402
from orchard.errors import InputError  # noqa: E402
from orchard.synth.cli import app  # noqa: E402

SEEDS = Path(__file__).resolve().parents[1] / "data" / "seeds" / "self_instruct_seed_tasks.jsonl"


def test_cli_help_has_examples():
    r = CliRunner()
    for cmd in ("seeds", "instructions", "evolve", "judge", "preferences", "judge-candidates"):
        out = r.invoke(app, [cmd, "--help"], terminal_width=200)
        assert out.exit_code == 0 and "Example: orchard synth " + cmd in out.output


def test_cli_seeds_instructions_judge(tmp_path):
    r = CliRunner()
    res = r.invoke(app, ["seeds", str(SEEDS), "--out", str(tmp_path / "seeds")])
    assert res.exit_code == 0, res.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "fine task here"}\n{"output": "no instruction"}\n')
    res = r.invoke(app, ["seeds", str(bad), "--out", str(tmp_path / "bad")])
    assert isinstance(res.exception, InputError) and res.exception.line == 2 and not (tmp_path / "bad").exists()
    with FakeTeacher(responder=responder) as srv:
        common = ["--base-url", srv.base_url, "--model", "fake"]
        res = r.invoke(app, ["instructions", str(tmp_path / "seeds"), "--out", str(tmp_path / "synth"), "--num", "6",
                             "--semantic-dedup", *common], terminal_width=200)
        assert res.exit_code == 0, res.output
        assert "rejected:" in res.output and "teacher calls" in res.output
        man = read_manifest(tmp_path / "synth")
        assert man["stage"] == "synth" and man["result"]["counts"]["kept"] == len(read_rows(tmp_path / "synth"))
        assert "embedding_spread" in man["result"]["metrics"]
        n = srv.stats()["requests"]
        res = r.invoke(app, ["instructions", str(tmp_path / "seeds"), "--out", str(tmp_path / "synth"), "--num", "6",
                             "--semantic-dedup", *common])
        assert res.exit_code == 0 and srv.stats()["requests"] == n  # same command again: all from the cache
        res = r.invoke(app, ["judge", str(tmp_path / "synth"), "--out", str(tmp_path / "judged"), "--min-overall", "1",
                             *common])
        assert res.exit_code == 0, res.output
        assert read_manifest(tmp_path / "judged")["result"]["counts"]["kept"] == man["result"]["counts"]["kept"]
