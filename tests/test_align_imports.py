"""align's modules import each other without circles (imports inside functions included), and the fast path reads
no environment variables: its switches are the ``fast:`` block of the config."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALIGN = ROOT / "align"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _graph() -> dict[str, set[str]]:
    """align-internal imports: module -> modules it imports (``align.x`` names, packages as their __init__)."""
    mods = {_module(p): p for p in ALIGN.rglob("*.py")}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = []
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    stem = ".".join(base + ([node.module] if node.module else []))
                elif node.module and node.module.startswith("orchard.align"):
                    stem = node.module.replace("orchard.align", "align", 1)
                else:
                    continue
                # `from . import x` names a module; `from .m import f` names m
                targets += [f"{stem}.{a.name}" for a in node.names if f"{stem}.{a.name}" in mods] or [stem]
            elif isinstance(node, ast.Import):
                targets += [a.name.replace("orchard.align", "align", 1) for a in node.names
                            if a.name.startswith("orchard.align")]
            for t in targets:
                if t in mods and t != mod:
                    graph[mod].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, n = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_in_align():
    graph = _graph()
    assert "align.fast.decoder" in graph["align.fast.unpad"]  # the graph sees relative imports
    assert _cycles(graph) == []


def test_the_fast_path_reads_no_environment_variables():
    for path in (ALIGN / "fast").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "os.environ" not in text and "ORCHARD_FAST" not in text and "getenv" not in text, path.name


def test_importing_the_fast_path_installs_no_hooks():
    """torch's process-wide optimizer hooks are untouched by importing align (the step counter of the fused
    layers' cast cache is installed when a fused layer first caches a cast)."""
    code = ("import torch.optim.optimizer as o; n = len(o._global_optimizer_post_hooks); "
            "import orchard.align.fast, orchard.align.fast.layer, orchard.align.sft, orchard.align.dpo; "
            "assert len(o._global_optimizer_post_hooks) == n, o._global_optimizer_post_hooks; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr[-2000:]
