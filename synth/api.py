"""synth's stage functions, as the runner and the CLI call them (see docs/CONTRACT.md).

Each stage: ``fn(<input folders>, out_dir, work_dir, config[, teacher]) -> dict`` (the manifest's counts and
metrics). Teacher calls go through ``Teacher`` with its SQLite log/cache at ``work_dir / "calls.sqlite"``, so a
killed stage re-run replays every completed call for free.
"""

from __future__ import annotations

from typing import Optional

from .methods_config import SelfInstructConfig, SynthConfig

# Self-Instruct settings a tiny teacher (128-256 tokens of context) can follow; pass the same values in the
# quickstart's SynthConfig so the prompts it is trained on are the prompts it will be sent.
TINY_TEACHER_SELF_INSTRUCT = {"num_prompt_instructions": 3, "num_machine_instructions": 1, "tasks_per_prompt": 2}


def teacher_training_examples(seeds: list[dict], n: int, seed: int = 0,
                              config: Optional[SynthConfig] = None, max_chars: int = 600) -> list[dict]:
    """``n`` chat examples ``{"messages": [user, assistant]}`` whose user turns are exactly what the Self-Instruct
    stage sends with ``config`` (bootstrap, classify, instance prompts; also the plain response prompt) and whose
    assistant turns are valid answers built from real seed tasks (a bootstrap prompt answered with other seed
    tasks as "Task N: ..." lines; "Yes"/"No"; "Input: ...\\nOutput: ..." or "Class label: ...\\nInput: ...").

    ``config=None`` uses ``TINY_TEACHER_SELF_INSTRUCT`` (3 in-context tasks, 2 new ones). Examples longer than
    ``max_chars`` are skipped so they fit a tiny model's context.
    """
    from .self_instruct import training_examples

    if config is None:
        config = SynthConfig(self_instruct=SelfInstructConfig(**TINY_TEACHER_SELF_INSTRUCT))
    return training_examples(seeds, n, seed, config, max_chars=max_chars)
