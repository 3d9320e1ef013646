"""What the runner hands a stage adapter (``StageContext``) and how the stage table describes a stage
(``StageSpec``). Separate from the runner so that the stage table and the runner do not import each other."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass
class StageContext:
    """What a stage adapter gets: its config, its inputs, a temporary output folder and a persistent work folder."""

    stage: str
    recipe: Any
    run_dir: Path
    out_dir: Path
    work_dir: Path
    inputs: dict[str, Path]
    teacher: Any = None  # a synth TeacherConfig with base_url/model filled in, for stages that call the teacher

    @property
    def config(self):
        return getattr(self.recipe, self.stage)


@dataclass
class StageSpec:
    name: str
    inputs: Callable[[Any, Path], dict[str, Path]]
    run: Callable[[StageContext], dict]
    needs_teacher: Callable[[Any], bool] = lambda recipe: False
    extra_fingerprint: Callable[[Any], Any] = lambda recipe: None
