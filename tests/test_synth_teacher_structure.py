"""The teacher sub-package's shape: its modules import each other without circles, and no module of synth imports
another module's private (underscore) names: what is shared is a documented part of a module's API."""

from __future__ import annotations

import ast
from pathlib import Path

SYNTH = Path(__file__).resolve().parents[1] / "synth"
TEACHER = SYNTH / "teacher"


def _imports(path: Path, package: str):
    """(module imported, names) for every ``from ... import`` in a file, at any depth (lazy imports count too),
    with relative imports resolved against ``package``."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod, [a.name for a in node.names]


def test_the_teacher_modules_import_each_other_without_circles():
    pkg = "orchard.synth.teacher"
    mods = {f.stem for f in TEACHER.glob("*.py") if f.stem != "__init__"}
    graph = {m: set() for m in mods}
    for m in mods:
        for mod, names in _imports(TEACHER / f"{m}.py", pkg):
            if mod == pkg:  # `from . import x`
                graph[m] |= set(names) & mods
            elif mod.startswith(pkg + "."):
                graph[m].add(mod.split(".")[3])
    state: dict[str, int] = {}

    def visit(m, path):
        if state.get(m) == 1:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        for n in sorted(graph[m]):
            visit(n, path + [m])
        state[m] = 2

    for m in sorted(mods):
        visit(m, [])


def test_no_module_imports_another_modules_private_names():
    bad = []
    for f in SYNTH.rglob("*.py"):
        package = ".".join(["orchard", *f.parent.relative_to(SYNTH.parent).parts])  # synth/x/y.py: orchard.synth.x
        for mod, names in _imports(f, package):
            if mod.startswith("orchard"):
                bad += [f"{f.relative_to(SYNTH.parent)}: {n} from {mod}" for n in names
                        if n.startswith("_") and not n.startswith("__")]
    assert not bad, bad


def test_the_teacher_has_no_unused_entry_points():
    from orchard.synth.teacher import Teacher

    assert not hasattr(Teacher, "arun"), "Teacher.arun was unused: chat_many and run go through the pool"
