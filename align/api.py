"""align's public API: the stage functions the runner calls, plus export and win-rate helpers."""

from __future__ import annotations

from .config import DPOConfig, EvalConfig, SampleConfig, SFTConfig
from .dpo import dpo_stage
from .evaluate import eval_stage, win_rates
from .export import export_merged
from .sample import policy_pairs_stage, sample_policies_stage, sample_stage
from .sft import sft_stage

__all__ = [
    "SFTConfig", "DPOConfig", "SampleConfig", "EvalConfig",
    "sft_stage", "dpo_stage", "sample_stage", "policy_pairs_stage", "sample_policies_stage", "eval_stage",
    "win_rates", "export_merged",
]
