"""Run onnxruntime-genai's model builder in a subprocess, the way Foundry Local and Olive build a
model for a device:

    python -m onnxruntime_genai.models.builder -i MODEL -o TMP -p PRECISION -e PROVIDER -c CACHE
           --extra_options int4_block_size=32 int4_accuracy_level=4 hf_token=false hf_remote=false

It writes into a temporary directory beside the target and renames it into place only when the
builder succeeded and left a ``genai_config.json``, so a failed or cancelled build leaves nothing
half-made. In a process of its own because the builder imports torch and transformers and holds
the whole model in memory while it works; its output goes to a log file whose tail is in the error.

The builder in onnxruntime-genai 0.12.2 knows precisions int4, fp16, bf16 and fp32 (not int8: an
int8 variant is its fp32 build quantized by onnxruntime, see quantize.py) and can emit CUDA
graphs on a machine without a GPU.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from controller.pipeline.events import Events
from controller.pipeline.modelkit.files import replace_dir, temp_dir_beside

BUILDER_MODULE = "onnxruntime_genai.models.builder"
GENAI_PRECISIONS = ("int4", "fp16", "fp32")  # what the builder is asked for; int8 comes from fp32
LOG_TAIL_CHARS = 3000

# The Hugging Face architectures (config.json "architectures"[0]) that the model builder of
# onnxruntime-genai 0.12.2 turns into a model (builder.py, create_model). The others take the
# optimum-onnx route (optimum_export.py). tests/test_build_variants.py checks the list against
# the installed builder.
GENAI_ARCHITECTURES = frozenset({
    "ChatGLMForConditionalGeneration", "ChatGLMModel", "Ernie4_5_ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "Gemma3ForCausalLM", "GptOssForCausalLM", "GraniteForCausalLM",
    "InternLM2ForCausalLM", "LlamaForCausalLM", "MistralForCausalLM", "NemotronForCausalLM",
    "OlmoForCausalLM", "PhiForCausalLM", "Phi3ForCausalLM", "PhiMoEForCausalLM", "Phi3SmallForCausalLM",
    "Qwen2ForCausalLM", "Qwen3ForCausalLM", "SmolLM3ForCausalLM",
})


class BuildError(RuntimeError):
    """A variant that could not be built; the message says why and what to do."""


def genai_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onnxruntime-genai")
    except PackageNotFoundError:
        return "unknown"


def builder_options(precision: str, block_size: int, accuracy_level: int) -> dict[str, str]:
    """The ``--extra_options`` for a build. Hub access and repository code stay off: the model
    is a local directory, and its config must not run code."""
    options = {"hf_token": "false", "hf_remote": "false"}
    if precision == "int4":
        options["int4_block_size"] = str(block_size)
        if accuracy_level:
            options["int4_accuracy_level"] = str(accuracy_level)
    return options


def run_genai_builder(model_dir: Path, out_dir: Path, *, precision: str, provider: str,
                      extra_options: Mapping[str, str], events: Events | None = None,
                      timeout_s: float | None = None, python: str = sys.executable) -> float:
    """Build ``model_dir`` into ``out_dir`` (replaced if it exists); the seconds it took.
    Raises BuildError with the builder's output tail; Cancelled (after killing it) when
    ``events`` asks for a cancel."""
    events = events or Events()
    if precision not in GENAI_PRECISIONS:
        raise BuildError(f"the onnxruntime-genai model builder makes {', '.join(GENAI_PRECISIONS)}, "
                         f"not {precision!r}")
    tmp = temp_dir_beside(Path(out_dir))
    cache = Path(tempfile.mkdtemp(prefix="genai-cache-", dir=tmp.parent))
    command = [python, "-m", BUILDER_MODULE, "-i", str(model_dir), "-o", str(tmp), "-p", precision,
               "-e", provider, "-c", str(cache)]
    if extra_options:
        command += ["--extra_options", *(f"{k}={v}" for k, v in extra_options.items())]
    started = time.monotonic()
    try:
        with tempfile.TemporaryFile() as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, env=builder_env())
            try:
                while process.poll() is None:
                    events.check_cancelled()
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        raise BuildError(f"the model builder ran past {timeout_s:.0f} s on {model_dir}; "
                                         f"stopped it{_tail(log)}")
                    time.sleep(0.2)
            finally:
                if process.poll() is None:
                    process.kill()
                process.wait()
            if process.returncode != 0:
                raise BuildError(f"the onnxruntime-genai model builder failed on {model_dir} "
                                 f"({precision}, {provider}, exit {process.returncode}){_tail(log)}")
            config = tmp / "genai_config.json"
            if not config.is_file():
                raise BuildError(f"the model builder exited 0 but wrote no genai_config.json{_tail(log)}")
            try:
                json.loads(config.read_text(encoding="utf-8"))
            except ValueError as e:
                raise BuildError(f"the model builder wrote a genai_config.json that is not JSON: "
                                 f"{e}") from None
        replace_dir(tmp, Path(out_dir))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)
    return time.monotonic() - started


def builder_env() -> dict[str, str]:
    """The builder's environment: torch on one intra-op thread.

    torch 2.13 on this CPU computes ``cos`` of a (256, 16) tensor wrong by up to 1.5e-4 in the
    rows a second OpenMP thread takes, in about one process in six (sin is not affected;
    measured 2026-12-03). The builder's rotary cache is such a tensor, so two builds of one
    model differed in ``cos_cache``: the same base no longer shared its bytes between two
    adapters, or two versions with the same weights. On one thread it was exact in 50 of 50
    processes. The builder's torch work is copying weights, so one thread costs little; its
    onnxruntime quantizers keep their own thread pool."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def _tail(log: IO[bytes]) -> str:
    log.seek(0)
    text = log.read().decode("utf-8", errors="replace").strip()
    return f"; its output ended with:\n{text[-LOG_TAIL_CHARS:]}" if text else " (no output)"
