"""The console of real commands (issue 17): orchard's own progress and summary, none of the libraries' noise that
asks nothing of a user; `--verbose` (or ORCHARD_VERBOSE=1) brings orchard's debug lines and the libraries back.

Each command runs in its own process, as a user runs it: logging is configured once, by the CLI's root command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from align_tiny import tiny_sft_rows  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# What the console showed before issue 17, on every run, and asks nothing of a user.
NOISE = (
    "Creating parquet from Arrow format",  # datasets' bar on every parquet write
    "Loading weights", "Writing model shards",  # transformers' bars
    "Building labels for", "Truncating train dataset", "Tokenizing train dataset",  # TRL's datasets.map bars
    "gemm_4bit_forward", "publisher trust",  # bitsandbytes / kernels on every CPU QLoRA run
    "Workspace with name", "Dataset with name",  # the Argilla SDK, on lookups orchard expects to miss
    "FutureWarning", "UserWarning", "warnings.warn(",  # library warnings
    "{'loss'", "'train_runtime'",  # the trainer's dict of metrics at every logging step
)


def _env(verbose: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "ORCHARD_VERBOSE"}
    env["COLUMNS"] = "200"  # rich wraps at 80 columns when not on a terminal
    if verbose:
        env["ORCHARD_VERBOSE"] = "1"
    return env


def _orchard(*args: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchard.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env or _env(), timeout=timeout)


def _noise(text: str) -> list[str]:
    return [n for n in NOISE if n in text]


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory, tiny_model_dir):
    from orchard.dataio import write_split

    root = tmp_path_factory.mktemp("console")
    rows = tiny_sft_rows(n_seeds=8)
    write_split(root / "data", "train", rows[4:])
    write_split(root / "data", "test", rows[:4])
    (root / "sft.yaml").write_text("max_steps: 2\nlogging_steps: 1\nsave_steps: 2\nper_device_train_batch_size: 4\n"
                                   "max_length: 48\nlora_r: 4\nlora_alpha: 8\n")
    return {"root": root, "base": str(tiny_model_dir)}


def _sft(sft_data, out: str, *pre: str) -> subprocess.CompletedProcess:
    root = sft_data["root"]
    return _orchard(*pre, "align", "sft", str(root / "data"), "--base-model", sft_data["base"], "--method", "qlora",
                    "--config", str(root / "sft.yaml"), "--out", str(root / out))


def test_run_shows_the_stage_lines_and_no_library_bars(tmp_path):
    r = _orchard("run", "recipes/smoke.yaml", "--to", "seeds", "--runs-dir", str(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "✓ seeds in " in r.stderr and "Run folder:" in r.stdout
    assert not _noise(r.stdout + r.stderr), r.stderr


def test_qlora_sft_on_cpu_prints_its_bar_and_summary_only(sft_data):
    r = _sft(sft_data, "sft")
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["steps"] == 2  # stdout is the result alone: no trainer dicts in it
    assert "SFT done: steps=2" in r.stderr
    assert "2/2 [" in r.stderr  # the trainer's progress bar stays
    assert not _noise(r.stdout + r.stderr), r.stderr


def test_verbose_brings_orchard_debug_lines_and_library_output_back(sft_data):
    r = _sft(sft_data, "sft-verbose", "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    err = " ".join(r.stderr.split())
    assert "orchard.align.callbacks: step 1: loss=" in err  # orchard's DEBUG lines
    assert "SFT done: steps=2" in err
    assert "Loading weights" in err  # transformers' bars are back
    assert json.loads(r.stdout)["steps"] == 2


_PROBE = textwrap.dedent("""
    import logging, warnings
    from orchard.log import setup
    setup(verbose=False)
    def warn(message, category, module):
        warnings.warn_explicit(message, category, module.replace(".", "/") + ".py", 1, module=module)
    warn("Workspace with name 'orchard' not found.", UserWarning, "argilla.client")
    warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning,
         "transformers.modeling_utils")
    warn("probe-library-other-warning", UserWarning, "argilla.client")
    warn("Workspace with name 'probe-orchard' not found.", UserWarning, "orchard.review.push")
    warn("probe-orchard-deprecation", DeprecationWarning, "orchard.synth.teacher")
    logging.getLogger("orchard.synth.teacher").info("probe-info")
    logging.getLogger("orchard.synth.teacher").debug("probe-debug")
    logging.getLogger("orchard.align").warning("probe-orchard-warning")
    logging.getLogger("bitsandbytes.backends.cpu.ops").warning("probe-bitsandbytes-warning")
    logging.getLogger("somelib").warning("probe-unlisted-library-warning")
""")


def _probe(verbose: bool) -> str:
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=_env(verbose), timeout=60)
    assert r.returncode == 0, r.stderr
    return " ".join(r.stderr.split())


def test_quiet_filters_only_the_listed_library_warnings_and_loggers():
    err = _probe(verbose=False)
    shown = ["probe-library-other-warning", "probe-orchard", "probe-orchard-deprecation", "probe-info",
             "warning: probe-orchard-warning", "warning: probe-unlisted-library-warning"]
    assert [s for s in shown if s not in err] == [], err
    hidden = ["Workspace with name 'orchard'", "is_gradient_checkpointing", "probe-debug",
              "probe-bitsandbytes-warning"]
    assert [s for s in hidden if s in err] == [], err


def test_orchard_verbose_env_shows_everything():
    err = _probe(verbose=True)
    for s in ("Workspace with name 'orchard'", "is_gradient_checkpointing", "probe-debug",
              "probe-bitsandbytes-warning", "probe-orchard-deprecation", "orchard.synth.teacher: probe-info"):
        assert s in err, (s, err)


def test_dp_tabular_run_keeps_stdout_clean_and_says_the_budget_split(tmp_path):
    """smartnoise printed its epsilon split to stdout (where a command's result goes), private-pgm warned on every
    fit and anonymeter on a table where singling-out finds few queries: orchard says what matters itself."""
    pytest.importorskip("snsynth")
    import statsmodels.api as sm

    table = tmp_path / "anes.csv"
    sm.datasets.anes96.load_pandas().data.drop(columns=["logpopul", "popul"]).iloc[:400].to_csv(table, index=False)
    r = _orchard("synth", "tabular", str(table), "--out", str(tmp_path / "out"), "--dp-epsilon", "2.0")
    assert r.returncode in (0, 3), r.stderr  # 3: the gate decided; either way the console is what is checked
    assert r.stdout == "", r.stdout
    assert "Spent" not in r.stderr and _noise(r.stderr) == [] and "singling out queries" not in r.stderr, r.stderr
    assert "epsilon 2, of which 0.6 finds the bounds of the continuous columns (1) and 1.4 trains" in r.stderr
    assert "privacy_report.md" in r.stderr
