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


def test_teacher_flags_are_built_from_the_teacher_config_fields():
    import typer.main

    from orchard.synth.cli import TEACHER_FLAGS, teacher_config
    from orchard.synth.teacher import TeacherConfig

    def field(path):
        model, *parents, name = [TeacherConfig, *path.split(".")]
        for p in parents:
            model = model.model_fields[p].annotation
        return model.model_fields[name]

    group = typer.main.get_command(app)
    for cmd in ("instructions", "evolve", "judge", "preferences", "judge-candidates"):
        params = {o: p for p in group.commands[cmd].params for o in p.opts}
        for flag, path in TEACHER_FLAGS.items():
            f = field(path)
            assert params[flag].help.endswith(f.description), (cmd, flag)
            assert params[flag].required if flag == "--model" else params[flag].default == f.default, (cmd, flag)
    values = {path: None for path in TEACHER_FLAGS.values()}
    tc = teacher_config({**values, "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 3,
                         "timeout_s": 7.0, "budget.max_calls": 5})
    assert (tc.max_concurrency, tc.timeout_s, tc.budget.max_calls, tc.api_key_env) == (3, 7.0, 5, "OPENAI_API_KEY")
    for bad, flag in (({"budget.max_cost_usd": 1.0}, "--max-cost"), ({"api_key_env": ""}, "--api-key-env")):
        try:
            teacher_config({**values, "base_url": "http://127.0.0.1:9/v1", "model": "m", **bad})
        except InputError as e:
            assert e.field == flag, (bad, e)
        else:
            raise AssertionError(f"{bad} passed")
    r = CliRunner().invoke(app, ["judge", str(SEEDS), "--out", "x", "--model", "m", "--timeout", "0"])
    assert r.exit_code == 2 and "--timeout" in r.output


def test_a_config_file_reports_every_problem_with_its_line(tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("synth:\n  num: 0\n  evol:\n    roundz: 2\n")
    r = CliRunner().invoke(app, ["instructions", str(SEEDS), "--out", str(tmp_path / "o"), "--model", "m",
                                 "--base-url", "http://127.0.0.1:9/v1", "--config", str(bad)])
    msg = str(r.exception)
    assert isinstance(r.exception, InputError) and f"{bad}:2: 'synth.num'" in msg, msg
    assert f"{bad}:4: 'synth.evol.roundz': unknown key" in msg, msg
    assert not (tmp_path / "o").exists()
