"""agent.telemetry.spool: numbering, bounds, acks, and surviving a killed agent."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.telemetry.spool import Spool, SpoolError
from protos import common_pb2

REPO = Path(__file__).resolve().parents[1]


def _values(x: float) -> list[common_pb2.MetricValue]:
    return [common_pb2.MetricValue(metric="cpu_percent", value=x),
            common_pb2.MetricValue(metric="cpu_core_percent", series="0", value=x / 2)]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    s = Spool(tmp_path / "agent" / "spool.db")
    yield s
    s.close()


def _seqs(spool: Spool, limit: int = 1000) -> list[int]:
    return [s.seq for s in spool.pending(limit)]


def test_samples_are_numbered_from_one_and_come_back_oldest_first(spool: Spool) -> None:
    assert [spool.append(1000 + i, _values(i)) for i in range(3)] == [1, 2, 3]
    samples = spool.pending(10)
    assert [s.seq for s in samples] == [1, 2, 3]
    assert samples[2].timestamp_ms == 1002
    assert list(samples[2].values) == _values(2)
    assert _seqs(spool, 2) == [1, 2]
    assert spool.pending_count() == 3 and spool.next_seq() == 4


def test_ack_deletes_only_acknowledged(spool: Spool) -> None:
    for i in range(5):
        spool.append(i, _values(i))
    assert spool.ack_through(3) == 3
    assert _seqs(spool) == [4, 5]
    assert spool.last_acked_seq() == 3 and spool.pending_count() == 2
    assert spool.ack_through(2) == 0  # a stale ack deletes nothing, doesn't move back
    assert spool.last_acked_seq() == 3
    assert _seqs(spool) == [4, 5]


def test_seq_is_never_reused_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path) as spool:
        for i in range(3):
            spool.append(i, _values(i))
        spool.ack_through(3)
        assert spool.pending_count() == 0
    with Spool(path) as spool:
        assert spool.last_acked_seq() == 3
        assert spool.append(99, _values(1)) == 4


def test_full_spool_drops_oldest_and_counts_them(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with Spool(path, max_samples=3) as spool:
        for i in range(5):
            spool.append(i, _values(i))
        assert _seqs(spool) == [3, 4, 5]
        assert spool.dropped_total() == 2 and spool.pending_count() == 3
    with Spool(path, max_samples=2) as spool:  # a smaller bound after a config change
        assert spool.dropped_total() == 2
        assert spool.append(5, _values(5)) == 6
        assert _seqs(spool) == [5, 6]
        assert spool.dropped_total() == 4


def test_ensure_seq_above_skips_seqs_the_controller_already_holds(spool: Spool) -> None:
    spool.append(0, _values(0))
    spool.ensure_seq_above(10)
    assert spool.next_seq() == 11
    spool.ensure_seq_above(2)  # never goes back
    assert spool.append(1, _values(1)) == 11
    assert _seqs(spool) == [1, 11]


def test_ensure_seq_above_is_kept_across_restart(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool.db") as spool:
        spool.ensure_seq_above(41)
    with Spool(tmp_path / "spool.db") as spool:
        assert spool.append(0, []) == 42


def test_an_ack_beyond_what_was_sent_also_moves_next_seq(spool: Spool) -> None:
    spool.append(0, _values(0))
    assert spool.ack_through(50) == 1
    assert spool.append(1, _values(1)) == 51


def test_unacked_samples_survive_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    n = 25
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from agent.telemetry.spool import Spool
        from protos import common_pb2
        spool = Spool(Path({str(path)!r}))
        for i in range({n}):
            spool.append(i, [common_pb2.MetricValue(metric="load1", value=i)])
        spool.ack_through(0)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    done = subprocess.run([sys.executable, "-c", child], cwd=REPO, capture_output=True,
                          timeout=30)
    assert done.returncode == -signal.SIGKILL, done.stderr.decode()
    with Spool(path) as spool:
        assert spool.pending_count() == n
        samples = spool.pending(n + 1)
        assert [s.seq for s in samples] == list(range(1, n + 1))
        assert [s.values[0].value for s in samples] == list(range(n))
        assert spool.append(0, []) == n + 1


def test_spool_file_is_private_and_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "spool.db"
    with Spool(path) as spool:
        spool.append(0, _values(0))
        assert path.stat().st_mode & 0o777 == 0o600
        assert Path(f"{path}-wal").stat().st_mode & 0o777 == 0o600
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


@pytest.mark.parametrize("bad", [0, -1])
def test_max_samples_below_one_is_refused(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ValueError, match=f"^spool max_samples must be >= 1, got {bad}$"):
        Spool(tmp_path / "spool.db", max_samples=bad)
    assert not (tmp_path / "spool.db").exists()


@pytest.mark.parametrize(
    "content",
    [b"this is not a database at all" * 100, b"SQLite format 3\x00" + b"\xff" * 4000],
    ids=["not-sqlite", "damaged-header"],
)
def test_corrupt_spool_is_refused_and_left_in_place(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(content)
    with pytest.raises(SpoolError, match="move the file aside") as err:
        Spool(path)
    assert str(path) in str(err.value)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    ("call", "arg"),
    [("ack_through", -1), ("ensure_seq_above", -5), ("ack_through", 2**63),
     ("pending", -1)],
)
def test_out_of_range_arguments_are_refused(spool: Spool, call: str, arg: int) -> None:
    with pytest.raises(ValueError, match=str(arg)):
        getattr(spool, call)(arg)
