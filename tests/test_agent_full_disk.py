"""A full disk on the device, for real: the agent's data dir on a 32 MB tmpfs of its own
(tests/conftest.py ``small_disk``, root only) that the test fills up mid-download. The device
says why it stopped (``failed: insufficient storage``, with the numbers), frees its partial
files, keeps serving the old model, keeps sampling telemetry, and finishes the release by itself
once there is room again. ``install-bundle`` on a full disk fails with a message, not a
traceback, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import errno
import json
import shutil
import threading
import time
from pathlib import Path

import pytest
import variants
from click.testing import CliRunner
from inproc import RunningAgent, RunningController
from procs import ProcessHarness
from test_delivery_e2e import _bundle, _device, _register, _wait_for
from test_delivery_processes import AGENT_FLAGS, _ask, _assign, _deployment, _wait_phase
from test_delivery_processes import _register as _register_in_db

from agent.cli import main as agent_cli
from agent.daemon import Agent, AgentSettings
from agent.telemetry.sampler import SystemSampler
from agent.telemetry.spool import Spool

FILL_CHUNK = 64 << 10


@pytest.fixture(scope="session")
def golden(tiny: variants.TinyVariants) -> list[dict[str, str]]:
    return variants.golden_rows(tiny.int4, tiny.test_rows, 4)


def fill(disk: Path, name: str = "filler.bin", leave: int = 0) -> Path:
    """Write a file on ``disk`` until it is full (or only ``leave`` bytes are free); bounded by
    the disk's size."""
    path = disk / name
    with open(path, "ab") as f:
        for _ in range(shutil.disk_usage(disk).total // FILL_CHUNK + 2):
            room = shutil.disk_usage(disk).free - leave
            if room <= 0:
                break
            try:
                f.write(b"\0" * min(FILL_CHUNK, room))
                f.flush()
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
    return path


def parts(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "blobs").glob("*.part"))


@pytest.mark.integration
@pytest.mark.timeout(400)
def test_full_disk_mid_download_fails_with_the_numbers_then_finishes_once_there_is_room(
        small_disk: Path, procs: ProcessHarness, tiny: variants.TinyVariants, golden, tmp_path: Path) -> None:
    controller = procs.start_controller()
    data_dir = small_disk / "edge-1"
    agent = procs.start_agent("edge-1", data_dir, token=procs.create_token()["token"],
                              extra=(*AGENT_FLAGS, "--keep-free-mb", "1"))
    profile = procs.wait_until(lambda: (d := procs.devices()) and d[0]["status"] == "online"
                               and d[0]["profile"], 30, "edge-1 online")
    first = _assign(procs, _register_in_db(controller.data_dir, tmp_path / "reg", tiny.int4, profile,
                                           golden, False))
    _wait_phase(procs, first, "active")
    assert _ask(agent) > 0

    # Release 2 carries 6 MB more, fetched at 1 MB/s: the disk fills while it downloads.
    second = _assign(procs, _register_in_db(controller.data_dir, tmp_path / "reg", tiny.int4, profile,
                                            golden, True))
    procs.wait_until(lambda: (d := _deployment(procs))["desired_release"] == second
                     and d["phase"] == "downloading" and d["bytes_done"] > 0, 60, "the download to start")
    filler = fill(small_disk)
    failed = _wait_phase(procs, second, "failed", timeout=60)
    reason = failed["reason"]
    assert reason.startswith("insufficient storage: need "), reason
    assert " have " in reason and " free on " in reason and "retries by itself" in reason, reason
    assert failed["active_release"] == first
    assert parts(data_dir) == []  # the partial files went, and with them the space they held
    assert agent.proc.running
    assert _ask(agent) > 0  # the old model is still served
    spool = agent.spool()
    assert spool is not None

    filler.unlink()  # room again: the device finishes the release without being told
    _wait_phase(procs, second, "active", timeout=180)
    assert _ask(agent) > 0
    # Telemetry kept being sampled through it all, and flows again.
    procs.wait_until(lambda: agent.spool().last_acked_seq > spool.next_seq + 5, 60,
                     "telemetry sampled after the disk was full to reach the controller")
    assert "Task exception was never retrieved" not in agent.proc.stderr()


def test_telemetry_sampling_survives_a_full_disk_and_counts_the_lost_samples(small_disk: Path) -> None:
    data_dir = small_disk / "agent"
    agent = Agent(AgentSettings(data_dir=data_dir, telemetry_interval_s=0.05))
    stored: list[float] = []
    result: dict[str, object] = {}

    async def scenario() -> None:
        with Spool(data_dir / "telemetry.db") as spool:
            task = asyncio.create_task(agent.sample_forever(SystemSampler(data_dir), spool,
                                                            lambda: stored.append(time.monotonic())))
            deadline = time.monotonic() + 20
            while len(stored) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            filler = fill(small_disk)
            while spool.dropped_total() == 0 and not task.done() and time.monotonic() < deadline + 40:
                await asyncio.sleep(0.05)
            result["alive_while_full"] = not task.done()
            result["lost"] = spool.dropped_total()
            filler.unlink()
            count = len(stored)
            while len(stored) < count + 3 and not task.done() and time.monotonic() < deadline + 80:
                await asyncio.sleep(0.05)
            result["stored_after"] = len(stored) - count
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        with Spool(data_dir / "telemetry.db") as again:
            result["lost_on_disk"] = again.dropped_total()

    thread = threading.Thread(target=lambda: asyncio.run(scenario()))
    thread.start()
    thread.join(150)
    assert result["alive_while_full"] is True, result
    assert isinstance(result["lost"], int) and result["lost"] > 0, result
    assert isinstance(result["stored_after"], int) and result["stored_after"] >= 3, result
    assert isinstance(result["lost_on_disk"], int) and result["lost_on_disk"] >= result["lost"], result


def test_install_bundle_on_a_full_disk_fails_clearly_and_leaves_no_partial_file(
        small_disk: Path, ctl: RunningController, tiny: variants.TinyVariants, golden,
        tmp_path: Path) -> None:
    agent = RunningAgent(ctl, small_disk / "edge-1", "edge-1", keep_free_bytes=0)
    _wait_for(lambda: (agent.data_dir / "profile.json").is_file(), "the agent to note its profile")
    agent.stop()
    profile = _device(ctl, "edge-1").profile
    bundle = _bundle(ctl, _register(ctl, tmp_path, "support", tiny.int4, profile, golden), profile,
                     tmp_path / "support.bundle")
    fill(small_disk, leave=bundle.stat().st_size // 4)
    free_before = shutil.disk_usage(small_disk).free
    result = CliRunner().invoke(agent_cli, ["install-bundle", str(bundle), "--data-dir", str(agent.data_dir),
                                            "--json"])
    assert result.exit_code != 0
    error = json.loads(result.output)["error"]
    assert "insufficient storage: need " in error and " have " in error, error
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert parts(agent.data_dir) == []
    assert shutil.disk_usage(small_disk).free >= free_before


def test_a_refused_bundle_leaves_no_blobs_behind(ctl: RunningController, tiny: variants.TinyVariants,
                                                 golden, tmp_path: Path) -> None:
    agent = RunningAgent(ctl, tmp_path / "edge-1", "edge-1")
    _wait_for(lambda: (agent.data_dir / "profile.json").is_file(), "the agent to note its profile")
    agent.stop()
    other = "cpu-arm64-int8"  # not this x86 device's profile: refused after the blobs were read
    assert _device(ctl, "edge-1").profile != other
    bundle = _bundle(ctl, _register(ctl, tmp_path, "support", tiny.int4, other, golden), other,
                     tmp_path / "arm.bundle")
    blobs = agent.data_dir / "blobs"
    before = sorted(p.name for p in blobs.iterdir()) if blobs.exists() else []
    result = CliRunner().invoke(agent_cli, ["install-bundle", str(bundle), "--data-dir", str(agent.data_dir),
                                            "--json"])
    assert result.exit_code != 0, result.output
    shown = json.loads(result.output)
    assert shown["phase"] == "refused" and "profile" in shown["reason"], shown
    assert sorted(p.name for p in blobs.iterdir()) == before
