"""docs/CONTRACT.md, checked: import-linter's contracts from pyproject.toml (packages independent, only the
spine's shared modules imported, no import circles), run over the source tree as it installs (synth/, review/
and align/ become orchard.synth, orchard.review, orchard.align)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _installed_layout(dest: Path) -> Path:
    """The ``orchard`` package as pyproject's package-dir lays it out (grimp reads one folder tree)."""
    pkg = dest / "orchard"
    shutil.copytree(ROOT / "orchard", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("synth", "review", "align"):
        shutil.copytree(ROOT / name, pkg / name, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), str(ROOT / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_import_contract_holds(tmp_path):
    r = _lint(_installed_layout(tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


def test_the_contract_check_catches_a_package_importing_another(tmp_path):
    # A check that cannot fail proves nothing: plant a forbidden import and a circle, and see both caught.
    tree = _installed_layout(tmp_path)
    (tree / "orchard" / "review" / "zz_planted.py").write_text("import orchard.align.config\nimport orchard.runner\n")
    (tree / "orchard" / "synth" / "zz_a.py").write_text("from . import zz_b\n")
    (tree / "orchard" / "synth" / "zz_b.py").write_text("def f():\n    from . import zz_a\n")
    r = _lint(tree)
    assert r.returncode != 0
    assert "0 kept, 3 broken" in r.stdout, r.stdout
    assert "orchard.review.zz_planted -> orchard.align.config" in r.stdout
    assert "zz_a" in r.stdout and "zz_b" in r.stdout
