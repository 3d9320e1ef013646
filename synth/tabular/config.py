"""Configuration of the tabular stage: synthesizer choice, holdout, privacy evaluation and gate thresholds.

The recipe schema embeds :class:`TabularConfig`, so field names are the recipe's YAML keys.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchard.schema import Strict


class GateThresholds(Strict):
    """Limits a synthetic table must meet before anything downstream may use it.

    A threshold set to ``None`` turns its check into a report-only number. Defaults are conservative:
    an honest GaussianCopula run on a few hundred rows passes them; a table that contains real rows fails.
    """

    # Copies: synthetic rows equal to a row of one train part alone, beyond what the holdout (a set the size
    # of each part) shows, less the noise the holdout's count allows (privacy.exchangeable_metrics). Natural
    # duplicates sit in several parts and do not count, so tables with many of them (statsmodels' fair: 22%
    # of unseen rows equal a training row) no longer hide copies. 1% of real rows fail on anes96 and fair.
    max_exact_copy_excess: float | None = Field(0.0, ge=0.0, le=1.0)
    # Near copies: the same within a small distance (closer than unseen real rows come to a train part).
    max_near_copy_excess: float | None = Field(0.0, ge=0.0, le=1.0)
    # Tie-aware share of synthetic rows closer to train than to the holdout, on holdout-sized train parts:
    # 0.5 when the synthesizer learnt the distribution, 1.0 when it copied every row (also with natural
    # duplicates). Honest runs measured 0.47-0.61 (anes96, fair; GaussianCopula and TabularARGN).
    max_dcr_share_closer_to_train: float | None = Field(0.7, ge=0.0, le=1.0)
    # Median DCR(synthetic -> train) / median DCR(holdout -> train), over rows that are not exact matches
    # (the copy checks judge those): below 1 means synthetic rows sit closer to the training rows than unseen
    # real rows do. Honest runs measured 1.06-1.75. A holdout without any positive distance fails closed.
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
    # Per column (columns.py); the check names the worst column. Shape: SDMetrics' KSComplement (numbers,
    # dates) or TVComplement (categories). Zeros: |share of exact zeros, real - synthetic| (a zero-inflated
    # count that loses its zeros fails). Missing: the same for missing values. Range: share of synthetic
    # values outside the real column's range.
    min_column_shape: float | None = Field(0.6, ge=0.0, le=1.0)
    max_zero_share_diff: float | None = Field(0.07, ge=0.0, le=1.0)
    max_missing_share_diff: float | None = Field(0.07, ge=0.0, le=1.0)
    max_out_of_range_share: float | None = Field(0.05, ge=0.0, le=1.0)
    # Train-on-synthetic/test-on-holdout score divided by train-on-real/test-on-holdout score.
    min_utility_ratio: float | None = Field(None, ge=0.0)


class TabularConfig(Strict):
    """What ``orchard synth tabular`` and the recipe's ``tabular`` stage accept."""

    metadata: str | None = Field(None, description="YAML overriding SDV's detected metadata")
    # auto: fit GaussianCopula and TabularARGN within time_budget_s, score each on a validation share of the
    # training rows, keep the best that passes the gate (select.py). Or one synthesizer by name.
    synthesizer: Literal["auto", "gaussian_copula", "tabular_argn", "ctgan", "tvae", "copulagan"] = "auto"
    time_budget_s: float = Field(120.0, gt=0, description="auto: seconds for fitting all candidates together")
    validation: float = Field(0.15, gt=0.0, lt=0.5, description="auto: share of train rows that score the candidates")
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
    # The copy checks' noise allowance, in standard deviations of the holdout's count (privacy._excess).
    copy_noise_z: float = Field(2.0, ge=0.0)
    # Near copies, scanned at the synthetic rows' own low distance quantiles (privacy.near_copy_scan): the level
    # of its one-sided test, Bonferroni over the thresholds.
    near_copy_alpha: float = Field(0.01, gt=0.0, lt=1.0)
    gate: GateThresholds = Field(default_factory=GateThresholds)
