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
    p = _write(tmp_path, GOOD.replace("test_size: 0.25", "test_size: 1.5").replace("  path: data/seeds/self_instruct_seed_tasks.jsonl\n", "  limit: 3\n"))
    with pytest.raises(InputError) as e:
        load_recipe(p)
    msg = str(e.value)
    assert "'split.test_size'" in msg and "less than 1" in msg
    assert "'seeds.path'" in msg and "Field required" in msg


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
