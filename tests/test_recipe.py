"""Recipe validation: a bad recipe is refused before anything runs, naming the key, its line and the expectation."""

from pathlib import Path

import pytest

from orchard.errors import InputError
from orchard.recipe import load_recipe, stages_in

REPO = Path(__file__).resolve().parents[1]

GOOD = """\
name: t1
seeds:
  path: data/seeds/self_instruct_seed_tasks.jsonl
split:
  test_size: 0.25
sft:
  base_model: some/model
  max_steps: 5
"""


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


def test_shipped_recipes_validate():
    for path in sorted((REPO / "recipes").rglob("*.yaml")):
        if "accelerate" in path.parts:  # accelerate launch configs, not recipes
            continue
        rec = load_recipe(path)
        assert stages_in(rec), path


def test_unknown_key_names_key_line_and_allowed_keys(tmp_path):
    p = _write(tmp_path, GOOD + "  learnin_rate: 0.1\n")
    with pytest.raises(InputError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:9" in msg and "'sft.learnin_rate'" in msg and "unknown key" in msg
    assert "learning_rate" in msg  # the list of what was expected


def test_wrong_type_names_line_and_expectation(tmp_path):
    p = _write(tmp_path, GOOD.replace("test_size: 0.25", "test_size: lots"))
    with pytest.raises(InputError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert f"{p}:5" in msg and "'split.test_size'" in msg and "number" in msg and "'lots'" in msg


def test_out_of_range_and_missing_required(tmp_path):
    p = _write(tmp_path, GOOD.replace("test_size: 0.25", "test_size: 1.5").replace("  path: data/seeds/self_instruct_seed_tasks.jsonl\n", "  max_seeds: 0\n"))
    with pytest.raises(InputError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "'split.test_size'" in msg and "less than 1" in msg
    assert "'seeds.path'" in msg and "Field required" in msg
    assert "'seeds.max_seeds'" in msg and "greater than or equal to 1" in msg


def test_invalid_yaml_names_line(tmp_path):
    p = _write(tmp_path, "name: x\nsft: [unclosed\n")
    with pytest.raises(InputError) as e:
        load_recipe(p)
    assert str(p) in str(e.value) and "not valid YAML" in str(e.value)


def test_overrides_are_typed_and_validated(tmp_path):
    p = _write(tmp_path, GOOD)
    rec = load_recipe(p, ["sft.max_steps=12", "split.test_size=0.3", "sft.method=lora"])
    assert rec.sft.max_steps == 12 and rec.split.test_size == 0.3 and rec.sft.method == "lora"
    with pytest.raises(InputError) as e:
        load_recipe(p, ["sft.method=int3"])
    assert "'sft.method'" in str(e.value)


def test_teacher_needs_an_endpoint_or_serve(tmp_path):
    p = _write(tmp_path, GOOD + "teacher:\n  temperature: 0.5\n")
    with pytest.raises(InputError) as e:
        load_recipe(p)
    assert "teacher" in str(e.value) and "base_url" in str(e.value)
    ok = _write(tmp_path, GOOD + "teacher:\n  serve:\n    model: run:teacher_model\n")
    assert load_recipe(ok).teacher.serve.model == "run:teacher_model"


# ---------------------------------------------------------------- typed option blocks: bad keys fail at validation

FULL = """\
name: full
seeds:
  path: data/seeds/self_instruct_seed_tasks.jsonl
tabular:
  table: data/tables/anes96.csv
  options:
    synthesizer: gaussian_copula
    gate:
      min_quality_score: 0.5
teacher:
  base_url: http://127.0.0.1:8000/v1
  model: teacher
synth:
  num: 10
split:
  test_size: 0.25
sft:
  base_model: some/model
preferences:
  source: judge
  options:
    num_responses: 3
rlaif:
  rounds: 1
  sample:
    num_completions: 2
  judge:
    min_margin: 0.5
  dpo:
    beta: 0.2
eval:
  win_rate:
    judge:
      judge_max_tokens: 16
"""


def _error(path, overrides=None) -> str:
    with pytest.raises(InputError) as e:
        load_recipe(path, overrides)
    return str(e.value)


def test_typed_blocks_hold_the_packages_models(tmp_path):
    from orchard.align.config import DPOConfig, SampleConfig
    from orchard.synth.methods_config import PairJudgeConfig, PreferencesConfig
    from orchard.synth.tabular.config import TabularConfig

    rec = load_recipe(_write(tmp_path, FULL))
    assert isinstance(rec.tabular.options, TabularConfig) and rec.tabular.options.gate.min_quality_score == 0.5
    assert isinstance(rec.preferences.options, PreferencesConfig) and rec.preferences.options.num_responses == 3
    assert isinstance(rec.rlaif.sample, SampleConfig) and isinstance(rec.rlaif.dpo, DPOConfig)
    assert isinstance(rec.rlaif.judge, PairJudgeConfig) and rec.rlaif.judge.judge == "pairwise"
    # win-rates count every verdict both orders agree on: no margin unless asked
    assert rec.eval.win_rate.judge.min_margin == 0.0 and rec.eval.win_rate.judge.judge_max_tokens == 16
    policy = load_recipe(_write(tmp_path, FULL.replace("source: judge\n  options:\n    num_responses: 3",
                                                       "source: reference_vs_policy\n  options:\n    num_completions: 1")))
    assert isinstance(policy.preferences.options, SampleConfig) and policy.preferences.options.num_completions == 1
    # no source: the teacher judges (as before)
    judged = load_recipe(_write(tmp_path, FULL.replace("  source: judge\n", "")))
    assert judged.preferences.source == "judge"


@pytest.mark.parametrize("where, bad, line, allowed", [
    ("    synthesizer: gaussian_copula\n", "    rowz: 10\n", 8, "rows"),                 # tabular.options
    ("      min_quality_score: 0.5\n", "      min_quality: 0.5\n", 10, "min_quality_score"),  # tabular.options.gate
    ("    num_responses: 3\n", "    num_responsez: 3\n", 23, "num_responses"),      # preferences.options (judge)
    ("    num_completions: 2\n", "    num_completionz: 2\n", 27, "num_completions"),  # rlaif.sample
    ("    min_margin: 0.5\n", "    num_responses: 2\n", 29, "min_margin"),          # rlaif.judge: sampling is align's
    ("    beta: 0.2\n", "    betaa: 0.1\n", 31, "beta"),                              # rlaif.dpo
    ("      judge_max_tokens: 16\n", "      judge_max_tokenz: 16\n", 35, "judge_max_tokens"),  # eval.win_rate.judge
])
def test_a_bad_key_in_an_option_block_names_its_line(tmp_path, where, bad, line, allowed):
    p = _write(tmp_path, FULL.replace(where, where + bad))
    msg = _error(p)
    key = bad.strip().split(":")[0]
    assert f"{p}:{line}: '" in msg and f".{key}': unknown key; expected one of: " in msg, msg
    assert allowed in msg.split("expected one of:")[1]


def test_preferences_options_follow_the_source(tmp_path):
    policy = FULL.replace("source: judge\n  options:\n    num_responses: 3",
                          "source: reference_vs_policy\n  options:\n    max_new_tokens: 48")
    p = _write(tmp_path, policy)
    assert load_recipe(p).preferences.options.max_new_tokens == 48
    # a judge's option is no policy-sampling option: refused where it is written, with the source's own keys
    msg = _error(_write(tmp_path, policy.replace("max_new_tokens: 48", "num_responses: 3")))
    assert f"{p}:22: 'preferences.options.num_responses': unknown key; expected one of: " in msg
    assert "num_completions" in msg and "temperatures" not in msg
    # the typo of the issue, through --set: the line is the block's, in the file
    msg = _error(p, ["preferences.options.max_new_tokenz=48"])
    assert f"{p}:21: 'preferences.options.max_new_tokenz': unknown key; expected one of: " in msg
    msg = _error(_write(tmp_path, FULL), ["preferences.source=reference_vs_policy", "preferences.options.max_new_tokens=48"])
    assert "'preferences.options.num_responses': unknown key" in msg  # the judge's options under the policy source
    msg = _error(_write(tmp_path, FULL), ["preferences.source=teacher"])
    assert f":19: 'preferences': 'source' must be 'judge' or 'reference_vs_policy'" in msg


def test_shipped_smoke_recipe_refuses_the_option_typo():
    msg = _error(REPO / "recipes" / "smoke.yaml", ["preferences.options.max_new_tokenz=48"])
    assert "smoke.yaml:" in msg and "'preferences.options.max_new_tokenz': unknown key" in msg


# ---------------------------------------------------------------- run:<stage> references

def test_run_reference_must_name_an_earlier_stage_of_the_recipe(tmp_path):
    p = _write(tmp_path, GOOD.replace("base_model: some/model", "base_model: run:teacher_model"))
    msg = _error(p)
    assert f"{p}:7: 'sft.base_model': this recipe has no stage 'teacher_model'" in msg
    msg = _error(_write(tmp_path, GOOD + "dpo:\n  base_model: run:dpo\n"))
    assert "'dpo.base_model': stage 'dpo' does not run before 'dpo'" in msg
    served = GOOD + "teacher:\n  serve:\n    model: run:sft\nsynth:\n  num: 5\n"
    msg = _error(_write(tmp_path, served))
    assert ":11: 'teacher.serve.model': stage 'sft' does not run before 'synth'" in msg
    ok = served.replace("run:sft", "run:teacher_model") + "teacher_model:\n  max_steps: 10\n"
    assert load_recipe(_write(tmp_path, ok)).teacher.serve.model.stage == "teacher_model"
    msg = _error(_write(tmp_path, FULL.replace("  num: 10\n", "  num: 10\n  grounded: {table: run:tabulr}\n")))
    assert "'synth.grounded.table': this recipe has no stage 'tabulr'" in msg


# ---------------------------------------------------------------- the teacher block

def test_a_served_teacher_takes_no_endpoint_and_null_serve_is_an_endpoint(tmp_path):
    served = GOOD + "teacher:\n  serve:\n    model: models/x\n  base_url: http://127.0.0.1:8000/v1\n"
    msg = _error(_write(tmp_path, served))
    assert "'teacher.base_url': unknown key" in msg and "serve" in msg
    # --set teacher.serve=null switches a served recipe to an endpoint, checked as synth's TeacherConfig
    p = _write(tmp_path, GOOD + "teacher:\n  serve:\n    model: models/x\n  temperature: 0.3\n")
    rec = load_recipe(p, ["teacher.serve=null", "teacher.base_url=http://127.0.0.1:8000/v1", "teacher.model=m"])
    assert rec.teacher.serve is None and rec.teacher.resolved_endpoints()[0].model == "m"
    assert "'teacher.base_url': Value error, base_url must look like" in _error(
        p, ["teacher.serve=null", "teacher.base_url=ftp://x", "teacher.model=m"])
    msg = _error(p, ["teacher.serve.modle=x"])
    assert f"{p}:10: 'teacher.serve.modle': unknown key; expected one of: device, model, threads" in msg


# ---------------------------------------------------------------- seeds: synth's SeedsConfig, synth's stage

def test_seeds_block_is_synths_seeds_config_and_runs_synths_stage(tmp_path):
    from orchard.dataio import read_manifest, read_rows
    from orchard.runner import Runner
    from orchard.synth.methods_config import SeedsConfig

    p = _write(tmp_path, GOOD.replace("name: t1", f"name: t1\nruns_dir: {tmp_path / 'runs'}"))
    rec = load_recipe(p, [f"seeds.path={REPO / 'data/seeds/self_instruct_seed_tasks.jsonl'}", "seeds.max_seeds=7"])
    assert isinstance(rec.seeds, SeedsConfig) and rec.seeds.max_seeds == 7
    Runner(rec).run(to_stage="seeds")
    out = tmp_path / "runs" / "t1" / "seeds"
    assert len(read_rows(out)) == 7 and read_manifest(out)["result"]["counts"]["train"] == 7
    assert "'seeds.limit': unknown key; expected one of: max_seeds, path" in _error(p, ["seeds.limit=3"])


def test_policy_pairs_reject_a_split_they_would_ignore(tmp_path):
    # reference_vs_policy pairs every split of its input; a split option would do nothing
    text = FULL.replace("source: judge\n  options:\n    num_responses: 3",
                        "source: reference_vs_policy\n  options:\n    split: test")
    msg = _error(_write(tmp_path, text))
    assert "preferences" in msg and "split does nothing here" in msg
