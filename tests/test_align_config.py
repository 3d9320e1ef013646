"""align's config models: every key acts where it is accepted, the rest is rejected with the reason and its line;
the fast path's switches are one typed block; model references go through orchard.schema.ModelRef."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from orchard.align.config import DPOConfig, DPOFastConfig, EvalConfig, FastConfig, SFTConfig
from orchard.errors import InputError
from orchard.schema import parse_yaml, validate


class _Recipe(BaseModel):  # the shape the recipe embeds align's blocks in
    sft: SFTConfig | None = None
    dpo: DPOConfig | None = None
    eval: EvalConfig | None = None


def _errors(text: str) -> str:
    doc = parse_yaml(text, "recipe.yaml")
    with pytest.raises(InputError) as e:
        validate(_Recipe, doc.data, doc=doc)
    return str(e.value)


def test_dpo_rejects_the_sft_adapter_keys_with_the_reason_and_line():
    msg = _errors("sft:\n  lora_r: 8\ndpo:\n  beta: 0.2\n  lora_r: 8\n  chat_template: x\n  lora_rr: 1\n")
    assert ("recipe.yaml:5: 'dpo.lora_r': DPO continues the SFT adapter (its LoRA shape is fixed there); "
            "set lora_r under sft") in msg
    assert "recipe.yaml:6: 'dpo.chat_template': DPO uses the SFT policy's chat template" in msg
    assert "recipe.yaml:7: 'dpo.lora_rr': unknown key" in msg  # the other errors of the block too
    for k in ("lora_alpha", "lora_dropout", "lora_target_modules"):
        with pytest.raises(ValidationError, match=f"set {k} under sft"):
            DPOConfig.model_validate({k: 1})
    assert "lora_r" not in DPOConfig.model_fields and "lora_r" in SFTConfig.model_fields


@pytest.mark.parametrize("algo,key,value", [
    ("orpo", "loss_weights", [1.0]), ("orpo", "loss_type", "ipo"), ("simpo", "precompute_ref_log_probs", True),
    ("dpo", "simpo_gamma", 1.0), ("dpo", "max_completion_length", 64), ("orpo", "label_smoothing", 0.1),
])
def test_dpo_fields_of_other_algorithms_are_rejected(algo, key, value):
    with pytest.raises(ValidationError, match=f"acts only with algorithm .* \\(algorithm is {algo}\\)"):
        DPOConfig(algorithm=algo, **{key: value})


def test_dpo_fields_where_they_act():
    assert DPOConfig(algorithm="simpo", simpo_gamma=1.0, max_completion_length=64).simpo_gamma == 1.0
    assert DPOConfig(algorithm="dpo", loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]).loss_weights
    assert DPOConfig(algorithm="cpo", loss_type="hinge").loss_type == ["hinge"]
    with pytest.raises(ValidationError, match="cpo takes one loss_type"):
        DPOConfig(algorithm="cpo", loss_type=["hinge", "sigmoid"])
    # bnb_* follow the SFT run's method unless a non-4-bit method is set here
    assert DPOConfig(bnb_double_quant=False).bnb_double_quant is False
    with pytest.raises(ValidationError, match="acts only with method qlora"):
        DPOConfig(method="lora", bnb_double_quant=False)


def test_sft_fields_that_would_act_nowhere():
    with pytest.raises(ValidationError, match="method full trains every weight"):
        SFTConfig(method="full", lora_r=8)
    with pytest.raises(ValidationError, match="acts only with method qlora"):
        SFTConfig(method="lora", bnb_quant_storage="bfloat16")
    assert SFTConfig(method="full").lora_r == 16  # defaults are fine: only keys set explicitly are checked
    # a dumped config (every field set, the idle ones at their defaults) validates again
    for cfg in (SFTConfig(method="full"), DPOConfig(algorithm="orpo", max_completion_length=64),
                DPOConfig(method="lora")):
        assert type(cfg).model_validate(cfg.model_dump()) == cfg


def test_fast_block():
    doc = parse_yaml("sft:\n  fast:\n    mode: off\n    memory_budget: auto\ndpo:\n  fast: {shared_prefix: no}\n")
    r = validate(_Recipe, doc.data, doc=doc)
    assert r.sft.fast.mode == "off" and r.sft.fast.memory_budget == "auto"  # YAML's bare `off` is False
    assert isinstance(r.dpo.fast, DPOFastConfig) and r.dpo.fast.shared_prefix is False
    assert type(r.sft.fast) is FastConfig and SFTConfig().fast.memory_budget == 16.0
    msg = _errors("sft:\n  fast:\n    shared_prefix: false\n    memory_budget: 0\n    keep_layers: many\n")
    assert "recipe.yaml:3: 'sft.fast.shared_prefix': unknown key" in msg  # DPO's only: nothing to share in SFT
    assert "recipe.yaml:4: 'sft.fast.memory_budget'" in msg and "recipe.yaml:5: 'sft.fast.keep_layers'" in msg
    for old in ("fast_path", "fast_memory_gib"):
        assert f"'sft.{old}': unknown key" in _errors(f"sft:\n  {old}: 1\n")
    for cls in (FastConfig, DPOFastConfig):
        assert all(f.description for f in cls.model_fields.values())


def test_base_model_is_a_model_reference(tmp_path):
    from orchard.align.sft import sft_stage

    with pytest.raises(ValidationError, match="must name a stage"):
        SFTConfig(base_model="run:")
    cfg = SFTConfig(base_model="run:teacher_model")
    assert cfg.base_model.stage == "teacher_model"
    # outside a recipe run nothing can resolve it: the stage says so before loading anything
    with pytest.raises(InputError, match="only work inside a recipe run"):
        sft_stage(tmp_path / "data", tmp_path / "out", tmp_path / "work", cfg)


def test_cli_config_errors_name_file_and_line(tmp_path):
    from typer.testing import CliRunner

    from orchard.align.cli import app

    bad = tmp_path / "dpo.yaml"
    bad.write_text("beta: 0.2\nlora_r: 8\n")
    res = CliRunner().invoke(app, ["dpo", str(tmp_path / "pairs"), "--sft", str(tmp_path / "sft"),
                                   "--out", str(tmp_path / "o"), "--config", str(bad)])
    assert res.exit_code == 2, res.output
    assert f"{bad}:2: 'lora_r': DPO continues the SFT adapter" in res.output
    res = CliRunner().invoke(app, ["sft", str(tmp_path), "--out", str(tmp_path / "o"), "--config",
                                   str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "config file not found" in res.output
    assert not (tmp_path / "o").exists()


def test_eval_general_split_needs_general_dir():
    msg = _errors("eval:\n  general_split: test\n")
    assert "general_split" in msg and "needs general_dir" in msg
    EvalConfig.model_validate({"general_dir": "data/general", "general_split": "test"})
    EvalConfig.model_validate(EvalConfig().model_dump())  # a dumped config validates again
