"""The review stage's configuration (embedded in recipes under `review:`; field names are the YAML keys)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from orchard.schema import Strict


class AutoPolicy(Strict):
    """Automatic acceptance: used when no people review (`mode: auto`), e.g. in a quickstart or CI."""

    min_judge_score: float | None = Field(
        None, description="Reject rows whose AI-judge `overall` score is below this (rows with no score are rejected)."
    )
    require_filters_passed: bool = Field(True, description="Reject rows whose provenance says a filter failed.")
    max_items: int | None = Field(
        None, ge=1, description="Keep at most this many rows (highest judge score first, then input order)."
    )


class ArgillaReview(Strict):
    """Human review on an Argilla server: orchard's own local one, or an existing deployment by URL."""

    url: str | None = Field(
        None, description="Existing Argilla deployment; None uses the local server in `server_dir` (orchard review serve)."
    )
    api_key_env: str = Field("ARGILLA_API_KEY", description="Environment variable holding the API key (for `url`).")
    server_dir: str | None = Field(
        None, description="Folder of the local server started by `orchard review serve` (its credentials file)."
    )
    workspace: str = "orchard"
    dataset: str = "orchard-review"
    min_submitted: int | None = Field(
        None, ge=1, description="How many reviewers must submit each record (task overlap). Push: 1 unless set; "
        "pull: the overlap the dataset was pushed with unless set."
    )
    guidelines: str | None = Field(None, description="Guidelines shown to reviewers (Markdown).")
    reviewers: list[str] = Field(default_factory=list, description="Usernames to create and add to the workspace.")
    with_vectors: bool = Field(False, description="Embed the instruction so reviewers can find similar items.")
    wait: bool = Field(False, description="Block until every record is reviewed; else return 'pending' and resume later.")
    wait_timeout_s: float | None = Field(None, description="Give up waiting after this many seconds (still pending).")
    poll_interval_s: float = Field(15.0, gt=0)
    apply_calibration: bool = Field(
        False, description="Accept/reject the unreviewed rest with the judge threshold that best matches reviewers."
    )


class ReviewConfig(Strict):
    mode: Literal["auto", "argilla"] = "auto"
    auto: AutoPolicy = Field(default_factory=AutoPolicy)
    argilla: ArgillaReview = Field(default_factory=ArgillaReview)
