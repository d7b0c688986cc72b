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
