"""The runner: composes the packages' stage functions into a resumable run under ``runs/<name>/``.

For each stage the runner hashes the stage's inputs (upstream output folders, input files) and its resolved config
into a fingerprint. A stage whose ``manifest.json`` holds the same fingerprint is skipped. Otherwise the stage
writes into a temporary folder that replaces ``runs/<name>/<stage>/`` only when the stage returns, and keeps
resumable state (call cache, checkpoints) in ``runs/<name>/.work/<stage>/``, which survives a crash.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from orchard.dataio import MANIFEST, atomic_dir, atomic_write_json, content_hash, read_manifest
from orchard.errors import OUTCOME_EXIT, InputError
from orchard.recipe import STAGE_ORDER, stages_in
from orchard.stage import StageContext, StageSpec
from orchard.standalone import hash_inputs, output_lock, remove_stale_temps, write_manifest

console = Console(stderr=True)

# What a changed work folder may keep: the teacher call cache is keyed by the full request, so it stays valid
# under any config change and keeps us from paying twice.
_KEEP_ON_CONFIG_CHANGE = ("calls.sqlite", "calls.sqlite-wal", "calls.sqlite-shm")


@dataclass
class StageOutcome:
    stage: str
    status: str  # ran | skipped | pending | lost | short | empty (the last three: the stage's own outcome)
    seconds: float = 0.0
    result: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return OUTCOME_EXIT.get(self.status, 0)

    @property
    def message(self) -> str:
        return (self.result.get("outcome") or {}).get("message", "")


class Runner:
    """Run a validated recipe's stages in order, skipping unchanged ones and resuming killed ones."""

    def __init__(self, recipe, *, runs_dir: str | Path | None = None, specs: dict[str, StageSpec] | None = None,
                 console_: Console | None = None):
        from orchard.stages import STAGES

        self.recipe = recipe
        self.specs = specs or STAGES
        self.run_dir = Path(runs_dir or recipe.runs_dir) / recipe.name
        self.console = console_ or console
        self._server_stack: contextlib.ExitStack | None = None
        self._teacher = None

    # ------------------------------------------------------------------ public

    def run(self, *, from_stage: str | None = None, to_stage: str | None = None, force: bool = False) -> list[StageOutcome]:
        names = stages_in(self.recipe)
        if not names:
            raise InputError("the recipe holds no stage blocks; nothing to run")
        for flag, value in (("--from", from_stage), ("--to", to_stage)):
            if value is not None and value not in names:
                raise InputError(f"{flag} {value}: not a stage of this recipe (its stages: {', '.join(names)})")
        start = names.index(from_stage) if from_stage else 0
        stop = names.index(to_stage) + 1 if to_stage else len(names)
        selected = names[start:stop]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        outcomes: list[StageOutcome] = []
        with self._lock(), contextlib.ExitStack() as stack:
            self._server_stack = stack
            atomic_write_json(self.run_dir / "recipe.resolved.json", self.recipe.model_dump(mode="json"))
            for name in selected:
                forced = force or (from_stage is not None and name == from_stage)
                outcome = self._run_stage(name, forced)
                outcomes.append(outcome)
                # Pending: waiting for people. Short or empty: fewer rows than the recipe's min_num, so the later
                # stages would train on less than asked; the run stops and says so (lost items alone do not stop it).
                if outcome.status in ("pending", "short", "empty"):
                    break
            self._server_stack = None
        self._write_run_summary(outcomes)
        return outcomes

    def stage_dir(self, name: str) -> Path:
        return self.run_dir / name

    # ------------------------------------------------------------------ internals

    def _lock(self):
        return output_lock(self.run_dir / ".lock", self.run_dir)

    def fingerprint(self, name: str) -> tuple[str, dict, dict]:
        spec = self.specs[name]
        inputs = spec.inputs(self.recipe, self.run_dir)
        for key, path in inputs.items():
            if not Path(path).exists():
                raise InputError(f"stage '{name}' needs {key} at {path}, which does not exist "
                                 f"(run the earlier stages first, or fix the path)")
        input_hashes = hash_inputs(inputs)
        cfg = getattr(self.recipe, name)
        config = cfg.model_dump(mode="json") if hasattr(cfg, "model_dump") else cfg
        extra = spec.extra_fingerprint(self.recipe)
        fp = content_hash({"stage": name, "config": config, "inputs": {k: v["hash"] for k, v in input_hashes.items()},
                           "extra": extra, "seed": self.recipe.seed}, n=32)
        return fp, input_hashes, {"stage": config, "extra": extra, "seed": self.recipe.seed}

    def _run_stage(self, name: str, forced: bool) -> StageOutcome:
        spec = self.specs[name]
        fp, input_hashes, config = self.fingerprint(name)
        _check_gated_inputs(name, input_hashes)
        final = self.stage_dir(name)
        old = read_manifest(final)
        if not forced and old.get("fingerprint") == fp and old.get("status") == "complete":
            self.console.print(f"[dim]· {name}: unchanged, skipped ({final})[/dim]")
            return StageOutcome(name, "skipped", 0.0, old.get("result", {}))
        work = self.run_dir / ".work" / name
        self._prepare_work(work, fp)
        # A stage killed with SIGKILL leaves its temporary folder behind; we hold the run lock, so it is stale.
        remove_stale_temps(self.run_dir, name)
        teacher = self._teacher_for(name) if spec.needs_teacher(self.recipe) else None
        self.console.rule(f"[bold]{name}")
        started = datetime.now(timezone.utc)
        t0 = time.perf_counter()
        try:
            with atomic_dir(final) as tmp:
                ctx = StageContext(name, self.recipe, self.run_dir, tmp, work,
                                   {k: Path(v["path"]) for k, v in input_hashes.items()}, teacher)
                result = spec.run(ctx) or {}
                if result.get("status") == "pending":
                    # Nothing final yet (e.g. reviewers still at work): leave the previous output in place.
                    raise _Pending(result)
                self._finish(name, tmp, fp, input_hashes, config, started, t0, result)
        except _Pending as p:
            self.console.print(f"[yellow]… {name}: pending[/yellow] {p.result.get('message', '')}")
            return StageOutcome(name, "pending", time.perf_counter() - t0, p.result)
        seconds = time.perf_counter() - t0
        status = (result.get("outcome") or {}).get("status", "complete")
        if status == "complete":
            self.console.print(f"[green]✓ {name}[/green] in {seconds:.1f}s → {final}")
            return StageOutcome(name, "ran", seconds, result)
        color = "yellow" if status == "lost" else "red"
        self.console.print(f"[{color}]! {name}[/{color}] in {seconds:.1f}s → {final}: "
                           f"{escape(result['outcome'].get('message', status))}")
        return StageOutcome(name, status, seconds, result)

    def _finish(self, name, tmp, fp, input_hashes, config, started, t0, result) -> None:
        """Write the manifest into the temporary output folder (renamed into place by the caller)."""
        write_manifest(tmp, self.stage_dir(name), stage=name, fingerprint=fp, inputs=input_hashes, config=config,
                       started=started, seconds=time.perf_counter() - t0, result=result)

    def _prepare_work(self, work: Path, fp: str) -> None:
        """A work folder belongs to one fingerprint: after a config or input change, keep only the call cache."""
        work.mkdir(parents=True, exist_ok=True)
        marker = work / ".fingerprint"
        if marker.exists() and marker.read_text().strip() != fp:
            for p in work.iterdir():
                if p.name in _KEEP_ON_CONFIG_CHANGE or p == marker:
                    continue
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        marker.write_text(fp)

    def _teacher_for(self, stage: str):
        """The teacher config for a stage, starting the run's own teacher server on first use."""
        if self._teacher is not None:
            return self._teacher
        t = self.recipe.teacher
        if t is None:
            raise InputError(f"stage '{stage}' calls a teacher model, but the recipe has no 'teacher:' block "
                             f"(give base_url and model, or serve: {{model: PATH}})", field="teacher")
        data = t.model_dump(exclude={"serve"})
        if t.serve is not None:
            from orchard.serve import TeacherServer

            model_path = Path(t.serve.model.resolve(self.run_dir))
            server = TeacherServer(model_path, device=t.serve.device, threads=t.serve.threads,
                                   log_path=self.run_dir / ".work" / "teacher-server.log")
            self.console.print(f"starting the run's teacher server for {model_path} …")
            warning = server.sampling_warning()
            if warning:
                self.console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
            self._server_stack.enter_context(server)
            data["base_url"], data["model"] = server.base_url, server.model
        from orchard.synth.teacher import TeacherConfig

        self._teacher = TeacherConfig.model_validate(data)
        return self._teacher

    def _write_run_summary(self, outcomes: list[StageOutcome]) -> None:
        from orchard.report import write_run_report

        write_run_report(self.run_dir, [n for n in STAGE_ORDER if (self.run_dir / n / MANIFEST).exists()])


def _check_gated_inputs(stage: str, input_hashes: dict) -> None:
    """A stage never reads an upstream folder whose manifest carries a privacy gate unless that gate passed on
    exactly the records in it (the tabular gate's one check: manifest gate plus content hash)."""
    for info in input_hashes.values():
        folder = Path(info["path"])
        if folder.is_dir() and "gate" in read_manifest(folder):
            from orchard.synth.tabular.gate import require_passing_gate

            try:
                require_passing_gate(folder)
            except InputError as e:
                raise InputError(f"stage '{stage}' refuses its input: {e}") from None


class _Pending(Exception):
    def __init__(self, result):
        self.result = result


def summarise(outcomes: list[StageOutcome]) -> list[dict]:
    return [{"stage": o.stage, "status": o.status, "seconds": round(o.seconds, 1),
             "result": json.loads(json.dumps(o.result, default=str))} for o in outcomes]
