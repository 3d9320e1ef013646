"""Every `orchard` command answers --help, and its help shows an example."""

import typer.main
from typer.testing import CliRunner

from orchard import cli


def _walk(cmd, path=()):
    yield path, cmd
    if hasattr(cmd, "commands"):
        for name, sub in cmd.commands.items():
            yield from _walk(sub, path + (name,))


def test_every_command_has_help_with_an_example():
    cli._mount_subapps()
    group = typer.main.get_command(cli.app)
    runner = CliRunner()
    seen, missing = [], []
    for path, cmd in _walk(group):
        res = runner.invoke(cli.app, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        seen.append(" ".join(path))
        if not hasattr(cmd, "commands") and "example" not in res.output.lower():
            missing.append(" ".join(path))
    assert {"run", "synth", "review", "align", "models"} <= {p.split(" ")[0] for p in seen if p}
    assert not missing, f"commands whose --help shows no example: {missing}"
