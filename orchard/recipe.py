"""Recipes: YAML files that say which stages run, with what settings. Validated before anything runs.

A recipe is data (like alignment-handbook's recipes). Its top-level keys are the run's name, the teacher
endpoint, and one block per stage; each stage block is the owning package's own config model (or embeds it), so
the YAML keys are those models' field names and ``orchard validate`` rejects every key a stage would. Errors name
the key, its line in the file, and what was expected (``orchard.schema``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional, Union

from pydantic import Discriminator, Field, Tag, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from orchard.align.config import DPOConfig, EvalConfig, SampleConfig, SFTConfig
from orchard.errors import InputError
from orchard.review.config import ReviewConfig
from orchard.schema import ModelRef, Strict, apply_overrides, error_lines, load_yaml, validate
from orchard.synth.teacher import TeacherConfig, TeacherSettings
from orchard.synth.methods_config import JudgeConfig, PairJudgeConfig, PreferencesConfig, SeedsConfig, SynthConfig
from orchard.synth.tabular.config import TabularConfig

# The order stages run in. A recipe may hold any subset; a stage's inputs come from the nearest earlier stage
# that produces what it needs (see orchard.stages).
STAGE_ORDER = [
    "seeds", "tabular", "teacher_model", "synth", "judge", "review", "split", "sft", "preferences", "dpo", "rlaif", "eval",
]


class SeedsBlock(SeedsConfig):
    """Where the seed examples come from (JSONL/CSV/Parquet; Self-Instruct, instruction/output or messages rows)."""

    path: str


class TabularBlock(Strict):
    table: str = Field(description="CSV or Parquet file with the sensitive table")
    options: TabularConfig = Field(default_factory=TabularConfig)


class TeacherModelConfig(Strict):
    """Build and train the tiny offline teacher (quickstart only): it speaks the teacher prompts' format."""

    seconds: float | None = Field(60, gt=0, description="training budget (see clock); null: train max_steps")
    max_steps: int | None = Field(None, ge=1)
    clock: Literal["wall", "cpu"] = Field("cpu", description="cpu: a loaded machine trains as many steps, slower")
    examples: int = Field(3000, ge=10)
    batch_size: int = Field(4, ge=1)
    seq_len: int = Field(128, ge=16)
    learning_rate: float = Field(3e-3, gt=0)
    assistant_only: bool = False
    seed: int = 0


# ---------------------------------------------------------------- teacher: an endpoint, or a model the run serves

class ServeConfig(Strict):
    """Serve a local model over the OpenAI protocol for the run (started and stopped by the runner)."""

    model: ModelRef = Field(description="a local model folder, or 'run:teacher_model' for the one the run trains")
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="CPU threads of the server (default 1)")


class EndpointTeacher(TeacherConfig):
    """The teacher is an endpoint (base_url + model, or endpoints): synth's TeacherConfig as it stands."""

    serve: None = Field(None, description="null here: no server of the run's own (lets --set teacher.serve=null "
                                          "switch a recipe to an endpoint)")


class ServedTeacher(TeacherSettings):
    """The teacher is a local model this run serves (``serve:``): how it is called, but no endpoint (the runner
    fills base_url and model in from the server it starts, then validates the whole as a TeacherConfig)."""

    serve: ServeConfig


def _teacher_kind(v) -> str:
    serve = v.get("serve") if isinstance(v, dict) else getattr(v, "serve", None)
    return "served" if serve is not None else "endpoint"


TeacherBlock = Annotated[
    Union[Annotated[EndpointTeacher, Tag("endpoint")], Annotated[ServedTeacher, Tag("served")]],
    Discriminator(_teacher_kind),
]


class SplitConfig(Strict):
    """Held-out split made by lineage: a seed's whole family (and its near-duplicates) falls on one side."""

    test_size: float = Field(0.2, gt=0, lt=1)
    near_duplicate_threshold: float = Field(0.7, gt=0, le=1, description="MinHash Jaccard that joins two families")
    seed: int | None = None


# ---------------------------------------------------------------- preferences: the options depend on the source

class JudgedPreferences(Strict):
    """The teacher answers N times per prompt and judges the answers (synth's PreferencesConfig)."""

    source: Literal["judge"] = "judge"
    options: PreferencesConfig = Field(default_factory=PreferencesConfig)


class PolicyPreferences(Strict):
    """chosen = the reviewed response, rejected = the SFT policy's own sample (align's SampleConfig; no judge)."""

    source: Literal["reference_vs_policy"]
    options: SampleConfig = Field(default_factory=SampleConfig)

    @model_validator(mode="after")
    def _split_does_not_act(self):
        # The stage pairs every split of its input (train and test alike); a split here would be silently ignored.
        if "split" in self.options.model_fields_set and self.options.split != SampleConfig().split:
            raise ValueError("options.split does nothing here: reference_vs_policy pairs every split of its input")
        return self


def _preferences_source(v) -> str:
    return v.get("source", "judge") if isinstance(v, dict) else getattr(v, "source", "judge")


PreferencesBlock = Annotated[
    Union[Annotated[JudgedPreferences, Tag("judge")], Annotated[PolicyPreferences, Tag("reference_vs_policy")]],
    Discriminator(_preferences_source, custom_error_type="source",
                  custom_error_message="'source' must be 'judge' or 'reference_vs_policy'"),
]


# ---------------------------------------------------------------- rlaif and eval: blocks the runner composes

class RLAIFConfig(Strict):
    """Rounds of: align samples the policy, synth's judge compares the samples, align trains DPO on the pairs."""

    rounds: int = Field(1, ge=1)
    sample: SampleConfig = Field(default_factory=SampleConfig)
    judge: PairJudgeConfig = Field(default_factory=PairJudgeConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)


class WinRateJudgeConfig(PairJudgeConfig):
    min_margin: float = Field(0.0, ge=0, description="win-rates count every verdict the two orders agree on")


class WinRateConfig(Strict):
    """Judge win-rates at eval: the final policy against the SFT policy and the base, on held-out prompts."""

    max_prompts: int | None = Field(64, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of the policies' answers")
    include_base: bool = True
    judge: WinRateJudgeConfig = Field(default_factory=WinRateJudgeConfig)


class EvalBlock(EvalConfig):
    """align's evaluation, plus (with a teacher) judge win-rates composed by the runner."""

    win_rate: WinRateConfig | None = None


class Recipe(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run folder name under runs/")
    description: str = ""
    seed: int = 0
    runs_dir: str = "runs"
    teacher: Optional[TeacherBlock] = None
    seeds: SeedsBlock | None = None
    tabular: TabularBlock | None = None
    teacher_model: TeacherModelConfig | None = None
    synth: SynthConfig | None = None
    judge: JudgeConfig | None = None
    review: ReviewConfig | None = None
    split: SplitConfig | None = None
    sft: SFTConfig | None = None
    preferences: Optional[PreferencesBlock] = None
    dpo: DPOConfig | None = None
    rlaif: RLAIFConfig | None = None
    eval: EvalBlock | None = None


# ---------------------------------------------------------------- loading

def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; raise InputError naming key, line and expectation."""
    doc = load_yaml(path, what="recipe")
    apply_overrides(doc.data, overrides)
    recipe = validate(Recipe, doc.data, doc=doc, what="recipe")
    bad = _stage_reference_errors(recipe)
    if bad:
        e = ValidationError.from_exception_data("Recipe", bad)
        raise InputError("invalid recipe:\n  " + "\n  ".join(error_lines(Recipe, e, doc=doc)))
    return recipe


def stages_in(recipe) -> list[str]:
    return [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]


# Settings that may name an earlier stage's output as ``run:<stage>``, besides the teacher's ``serve.model``.
_STAGE_REFERENCES = (("sft", "base_model"), ("dpo", "base_model"), ("rlaif", "dpo", "base_model"),
                     ("synth", "grounded", "table"))


def _stage_references(recipe) -> list[tuple[tuple, ModelRef, list[str]]]:
    """Every ``run:<stage>`` reference of a recipe: (its location, the reference, the stages that read it)."""
    from orchard.stages import STAGES

    refs = []
    serve = getattr(recipe.teacher, "serve", None)
    if serve is not None:
        users = [s for s in stages_in(recipe) if STAGES[s].needs_teacher(recipe)]
        refs.append((("teacher", "serve", "model"), serve.model, users))
    for loc in _STAGE_REFERENCES:
        value = recipe
        for key in loc:
            value = getattr(value, key, None)
        if value is not None:
            refs.append((loc, ModelRef(str(value)), [loc[0]]))
    return refs


def _stage_reference_errors(recipe) -> list[InitErrorDetails]:
    """A ``run:<stage>`` reference must name a stage of this recipe that runs before every stage reading it."""
    have = stages_in(recipe)
    errors = []
    for loc, ref, users in _stage_references(recipe):
        if ref.stage is None or not users:
            continue
        first = min(users, key=STAGE_ORDER.index)
        if ref.stage not in have:
            msg = f"this recipe has no stage '{ref.stage}' (it has: {', '.join(have)})"
        elif STAGE_ORDER.index(ref.stage) >= STAGE_ORDER.index(first):
            msg = f"stage '{ref.stage}' does not run before '{first}', which reads it; name an earlier stage"
        else:
            continue
        errors.append(InitErrorDetails(type=PydanticCustomError("stage_reference", "{msg}", {"msg": msg}),
                                       loc=loc, input=str(ref)))
    return errors
