"""Configuration of the tabular stage: synthesizer choice, holdout, privacy evaluation and gate thresholds.

The recipe schema embeds :class:`TabularConfig`, so field names are the recipe's YAML keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class GateThresholds(BaseModel):
    """Limits a synthetic table must meet before anything downstream may use it.

    A threshold set to ``None`` turns its check into a report-only number. Defaults are conservative:
    an honest GaussianCopula run on a few hundred rows passes them; a table that contains real rows fails.
    """

    model_config = ConfigDict(extra="forbid")

    # Share of synthetic rows identical to a training row, minus the share of holdout rows identical to a
    # training row (tables with few discrete columns hold natural duplicates; only the excess is a leak).
    max_exact_copy_excess: float | None = Field(0.0, ge=0.0, le=1.0)
    # Share of synthetic rows closer to a train sample than to the (equal-sized) holdout, ties half:
    # 0.5 when the synthesizer learnt the distribution, not the rows. Small tables wander around 0.5 even
    # when honest: wine (45 holdout rows) and a 300-row mixed table measured 0.44-0.61 over seeds 0-2.
    max_dcr_share_closer_to_train: float | None = Field(0.7, ge=0.0, le=1.0)
    # Median DCR(synthetic -> train) / median DCR(holdout -> train): below 1 means synthetic rows sit
    # closer to the training rows than unseen real rows do. Honest GaussianCopula runs measured 0.81-1.53
    # (a well-fitted model puts mass where the data are dense), so the default leaves room below 1.
    min_dcr_median_ratio: float | None = Field(0.7, ge=0.0)
    # Same ratio at the 5th percentile: memorised rows show first in the lower tail.
    min_dcr_p05_ratio: float | None = Field(0.5, ge=0.0)
    # Median nearest-neighbour distance ratio (closest / second closest train row), synthetic over holdout.
    min_nndr_median_ratio: float | None = Field(None, ge=0.0)
    # Anonymeter risks (attack success over the holdout control, 0 = no risk). The gate uses the risk's
    # point estimate. Singling-out is report-only by default: on tables with continuous columns an honest
    # GaussianCopula sample scored 0.15 and one with 29% real rows 0.18 (anes96, multivariate), so it does
    # not separate leaks from noise; linkability (0.005 vs 0.24) and inference (0.0 vs 0.42) do.
    max_singling_out_risk: float | None = Field(None, ge=0.0, le=1.0)
    max_linkability_risk: float | None = Field(0.2, ge=0.0, le=1.0)
    # Inference is report-only by default too: when the secret is predictable from the other columns the
    # control's success rate is high and the risk estimate is noise on small holdouts (honest wine runs,
    # 45 attacks: 0.0-0.31, 95% CI up to 0.82).
    max_inference_risk: float | None = Field(None, ge=0.0, le=1.0)
    # SDMetrics QualityReport overall score (column shapes and pair trends), 0..1.
    min_quality_score: float | None = Field(0.6, ge=0.0, le=1.0)
    # Train-on-synthetic/test-on-holdout score divided by train-on-real/test-on-holdout score.
    min_utility_ratio: float | None = Field(None, ge=0.0)


class TabularConfig(BaseModel):
    """What ``orchard synth tabular`` and the recipe's ``tabular`` stage accept."""

    model_config = ConfigDict(extra="forbid")

    metadata: str | None = Field(None, description="YAML overriding SDV's detected metadata")
    synthesizer: Literal["gaussian_copula", "ctgan", "tvae", "copulagan"] = "gaussian_copula"
    rows: int | None = Field(None, ge=1, description="synthetic rows to sample (default: as many as train)")
    holdout: float = Field(0.25, gt=0.0, lt=1.0, description="share of real rows kept away from the synthesizer")
    min_holdout_rows: int = Field(10, ge=2, description="refuse tables whose holdout would be smaller")
    target: str | None = Field(None, description="column for the utility test (train on synthetic, test on real)")
    seed: int = 0
    epochs: int | None = Field(None, ge=1, description="CTGAN/TVAE/CopulaGAN epochs (SDV default if unset)")
    batch_size: int | None = Field(None, ge=2, description="CTGAN/TVAE/CopulaGAN batch size")
    # Differential privacy: SDV has none (SDV#779); a set epsilon switches to smartnoise-synth's MST.
    dp_epsilon: float | None = Field(None, gt=0.0)
    # Anonymeter attack counts (each costs time; small tables cap them at the holdout size).
    n_attacks: int = Field(200, ge=10)
    # Singling-out queries are the slowest attack (pandas queries per attack: 20-100 s for 200 attacks on
    # ~700 rows); it runs with its own, smaller attack count, or not at all.
    singling_out: Literal["univariate", "multivariate", "off"] = "univariate"
    singling_out_attacks: int = Field(100, ge=10)
    inference_secrets: list[str] | None = Field(
        None, description="columns anonymeter tries to infer (default: the target, else up to 3 columns)"
    )
    gate: GateThresholds = Field(default_factory=GateThresholds)
