"""Packaging: the three folders install as orchard.synth / orchard.review / orchard.align, never as top-level names."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _declared_packages():
    return set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])


def test_every_subpackage_is_declared():
    mapping = {"orchard": "orchard", "synth": "orchard.synth", "review": "orchard.review", "align": "orchard.align"}
    found = set()
    for top, dotted in mapping.items():
        for init in (REPO / top).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / top).parts
            found.add(".".join((dotted, *rel)))
    missing = found - _declared_packages()
    assert not missing, f"add these to pyproject.toml [tool.setuptools] packages: {sorted(missing)}"


def test_wheel_installs_under_orchard_and_imports(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path), str(REPO)], check=True, capture_output=True)
    wheel = next(tmp_path.glob("orchard-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert tops == {"orchard", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}, tops
    assert "orchard/synth/__init__.py" in names and "orchard/align/__init__.py" in names
    assert "orchard/review/__init__.py" in names
    assert any(re.match(r"orchard/synth/prompts/.+", n) for n in names), "prompt templates must ship"
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import orchard.synth, orchard.review, orchard.align; "
            "assert orchard.synth.__file__.startswith(sys.argv[1]), orchard.synth.__file__; "
            "import importlib.util as u; assert u.find_spec('synth') is None and u.find_spec('align') is None")
    subprocess.run([sys.executable, "-c", code, str(site)], check=True, cwd=tmp_path)


def test_editable_install_imports_from_the_repo(tmp_path):
    code = ("import orchard.synth, orchard.align, orchard.review, importlib.util as u; "
            "print(orchard.synth.__file__); assert u.find_spec('synth') is None")
    out = subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, capture_output=True, text=True)
    assert out.stdout.strip() == str(REPO / "synth" / "__init__.py")
