"""Recipes: YAML files that say which stages run, with what settings. Validated before anything runs.

A recipe is data (like alignment-handbook's recipes). Its top-level keys are the run's name, the teacher
endpoint, and one block per stage; each stage block is the owning package's own config model, so the YAML keys
are those models' field names. Errors name the key, its line in the file, and what was expected.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import field_validator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from orchard.errors import InputError

# The order stages run in. A recipe may hold any subset; a stage's inputs come from the nearest earlier stage
# that produces what it needs (see runner.STAGES).
STAGE_ORDER = [
    "seeds", "tabular", "teacher_model", "synth", "judge", "review", "split", "sft", "preferences", "dpo", "rlaif", "eval",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SeedsConfig(_Strict):
    """Where the seed examples come from (JSONL/CSV/Parquet; Self-Instruct, instruction/output or messages rows)."""

    path: str
    limit: int | None = Field(None, ge=1, description="use only the first N seeds")


class TabularStageConfig(_Strict):
    table: str = Field(description="CSV or Parquet file with the sensitive table")
    options: dict[str, Any] = Field(default_factory=dict, description="orchard.synth.tabular TabularConfig fields")


class TeacherModelConfig(_Strict):
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


class ServeConfig(_Strict):
    """Serve a local model over the OpenAI protocol for the run (started and stopped by the runner)."""

    model: str = Field(description="a local model folder, or 'run:teacher_model' for the one the run trains")
    device: str = "cpu"
    threads: int | None = Field(None, ge=1, description="CPU threads of the server (default 1)")


class SplitConfig(_Strict):
    """Held-out split made by lineage: a seed's whole family (and its near-duplicates) falls on one side."""

    test_size: float = Field(0.2, gt=0, lt=1)
    near_duplicate_threshold: float = Field(0.7, gt=0, le=1, description="MinHash Jaccard that joins two families")
    seed: int | None = None


class PreferencesStageConfig(_Strict):
    source: Literal["judge", "reference_vs_policy"] = Field(
        "judge",
        description="judge: N teacher responses per prompt judged pairwise; reference_vs_policy: chosen = the "
        "reviewed response, rejected = the SFT policy's own sample (needs no judge)",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="fields of the source's own config")


class WinRateConfig(_Strict):
    """Judge win-rates at eval: the final policy against the SFT policy and the base, on held-out prompts."""

    max_prompts: int | None = Field(64, ge=1)
    max_new_tokens: int = Field(256, ge=1)
    temperature: float = Field(0.7, ge=0, le=2, description="sampling temperature of the policies' answers")
    include_base: bool = True
    judge: dict[str, Any] = Field(default_factory=dict, description="synth PreferencesConfig fields for the judge")

    @field_validator("judge")
    @classmethod
    def _judge_fields(cls, v: dict) -> dict:
        # Checked here, so that `orchard validate` catches a bad judge field, not the eval stage an hour later.
        from orchard.synth.methods_config import PreferencesConfig

        PreferencesConfig.model_validate({"judge": "pairwise", **v})
        return v


class RLAIFConfig(_Strict):
    rounds: int = Field(1, ge=1)
    sample: dict[str, Any] = Field(default_factory=dict, description="align SampleConfig fields")
    judge: dict[str, Any] = Field(default_factory=dict, description="synth pairwise judge fields")
    dpo: dict[str, Any] = Field(default_factory=dict, description="align DPOConfig fields")


def _package_models() -> dict[str, Any]:
    """The packages' config models, imported only when a recipe is loaded (keeps `orchard --help` fast)."""
    from orchard.align.config import DPOConfig, EvalConfig, SFTConfig
    from orchard.review.config import ReviewConfig
    from orchard.synth.teacher import TeacherConfig
    from orchard.synth.methods_config import JudgeConfig, SynthConfig

    return dict(
        TeacherConfig=TeacherConfig, SynthConfig=SynthConfig, JudgeConfig=JudgeConfig, ReviewConfig=ReviewConfig,
        SFTConfig=SFTConfig, DPOConfig=DPOConfig, EvalConfig=EvalConfig,
    )


_RECIPE_MODEL = None


def recipe_model():
    """Build (once) the pydantic model of a whole recipe from the packages' config models."""
    global _RECIPE_MODEL
    if _RECIPE_MODEL is not None:
        return _RECIPE_MODEL
    m = _package_models()
    base = m["TeacherConfig"]

    class TeacherBlock(base):
        """The teacher endpoint, or ``serve:`` a local model that the run starts and stops itself."""

        serve: ServeConfig | None = None

        @model_validator(mode="after")
        def _one_way_to_name_endpoints(self):  # same name: replaces the parent's check
            if self.serve is not None:
                if self.base_url or self.endpoints:
                    raise ValueError("'serve' starts the run's own teacher server: drop base_url/endpoints")
                return self
            return base._one_way_to_name_endpoints(self)

    teacher_block = TeacherBlock

    class EvalBlock(m["EvalConfig"]):
        """align's evaluation, plus (with a teacher) judge win-rates composed by the runner."""

        win_rate: WinRateConfig | None = None
    _RECIPE_MODEL = create_model(
        "Recipe",
        __config__=ConfigDict(extra="forbid"),
        name=(str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", description="run folder name under runs/")),
        description=(str, ""),
        seed=(int, 0),
        runs_dir=(str, "runs"),
        teacher=(teacher_block | None, None),
        seeds=(SeedsConfig | None, None),
        tabular=(TabularStageConfig | None, None),
        teacher_model=(TeacherModelConfig | None, None),
        synth=(m["SynthConfig"] | None, None),
        judge=(m["JudgeConfig"] | None, None),
        review=(m["ReviewConfig"] | None, None),
        split=(SplitConfig | None, None),
        sft=(m["SFTConfig"] | None, None),
        preferences=(PreferencesStageConfig | None, None),
        dpo=(m["DPOConfig"] | None, None),
        rlaif=(RLAIFConfig | None, None),
        eval=(EvalBlock | None, None),
    )
    return _RECIPE_MODEL


# ---------------------------------------------------------------- YAML with line numbers

class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key and sequence item."""


def _construct_mapping(loader, node, deep=False):
    mapping = yaml.SafeLoader.construct_mapping(loader, node, deep=True)
    lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        lines[key] = (key_node.start_mark.line + 1, value_node)
    loader._lines[id(mapping)] = {k: v[0] for k, v in lines.items()}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _load_yaml_with_lines(text: str, path: str) -> tuple[Any, dict]:
    loader = _LineLoader(text)
    loader._lines = {}
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise InputError(f"not valid YAML: {getattr(e, 'problem', e)}", path=path,
                         line=(mark.line + 1) if mark else None) from None
    finally:
        loader.dispose()
    return data, loader._lines


def _line_of(data: Any, lines: dict, loc: tuple) -> int | None:
    """Walk the error location through the parsed YAML; return the line of the deepest key found."""
    line, node = None, data
    for part in loc:
        if isinstance(node, dict) and part in node:
            line = lines.get(id(node), {}).get(part, line)
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            break
    return line


def set_override(data: dict, dotted: str, raw_value: str) -> None:
    """Apply one ``--set a.b.c=value`` (the value parsed as YAML, so numbers and booleans keep their type)."""
    if "=" not in dotted and raw_value is None:
        raise InputError(f"--set expects key=value, got {dotted!r}")
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        if node.get(k) is None:
            node[k] = {}
        if not isinstance(node[k], dict):
            raise InputError(f"--set {dotted}: '{k}' is not a mapping in the recipe", field=dotted)
        node = node[k]
    node[keys[-1]] = yaml.safe_load(raw_value) if raw_value != "" else ""


def load_recipe(path: str | Path, overrides: list[str] | None = None):
    """Read, override and validate a recipe; raise InputError naming key, line and expectation."""
    path = Path(path)
    if not path.exists():
        raise InputError("recipe file not found", path=path)
    text = path.read_text(encoding="utf-8")
    data, lines = _load_yaml_with_lines(text, str(path))
    if not isinstance(data, dict):
        raise InputError("a recipe must be a YAML mapping of keys (name, teacher, stage blocks)", path=path)
    lines_src = lines
    for item in overrides or []:
        if "=" not in item:
            raise InputError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        set_override(data, k.strip(), v)
    model = recipe_model()
    try:
        recipe = model.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            loc = tuple(err["loc"])
            key = ".".join(str(p) for p in loc)
            line = _line_of(data, lines_src, loc)
            where = f"{path}:{line}" if line else str(path)
            expected = err["msg"]
            if err["type"] == "extra_forbidden":
                allowed = _allowed_keys(model, loc[:-1])
                expected = "unknown key" + (f"; expected one of: {', '.join(allowed)}" if allowed else "")
            got = err.get("input")
            got_s = "" if err["type"] in ("extra_forbidden", "missing") else f" (got {got!r})"
            msgs.append(f"{where}: '{key}': {expected}{got_s}")
        raise InputError("invalid recipe:\n  " + "\n  ".join(msgs)) from None
    return recipe


def _allowed_keys(model, loc: tuple) -> list[str]:
    """Field names of the sub-model at ``loc`` (best effort, for 'did you mean' messages)."""
    import typing

    cur = model
    for part in loc:
        if isinstance(part, int):
            continue
        f = getattr(cur, "model_fields", {}).get(part)
        if f is None:
            return []
        ann = f.annotation
        cands = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)] or (
            [ann] if isinstance(ann, type) and issubclass(ann, BaseModel) else [])
        if not cands:
            return []
        cur = cands[0]
    return sorted(getattr(cur, "model_fields", {}).keys())


def stages_in(recipe) -> list[str]:
    return [s for s in STAGE_ORDER if getattr(recipe, s, None) is not None]
