"""The FleetStore contract, run against every backend (SQLite files now; PostgreSQL later)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from controller.store import (
    Conflict,
    DeviceRecord,
    FleetStore,
    IngestItem,
    NotFound,
    SampleRow,
    StoreError,
    TokenRecord,
    TokenRejected,
    Touch,
    open_store,
    sqlite_url,
)

Opener = Callable[[], FleetStore]
DAY = 86_400_000
NOW = 1_800_000_000_000


TOKEN = TokenRecord(
    id="t-abc", verifier=b"\x01" * 32, labels={"site": "lab", "tier": "edge"},
    created_at_ms=NOW - DAY, expires_at_ms=NOW + DAY, max_uses=10,
)


def _token(**changes: Any) -> TokenRecord:
    return replace(TOKEN, **changes)


def _device(device_id: str = "d-1", name: str = "edge-1", **labels: str) -> DeviceRecord:
    return DeviceRecord(
        id=device_id, name=name, labels=labels, hardware={"cpu": "arm64"}, profile="pi5",
        agent_version="0.1.0", cert_serial="0a1b", enrolled_at_ms=NOW,
    )


def _dev(store: FleetStore, device_id: str) -> DeviceRecord:
    found = store.find_device(device_id)
    assert found is not None, device_id
    return found


def _uses(store: FleetStore) -> int:
    token = store.get_token("t-abc")
    assert token is not None
    return token.uses


def _sample(seq: int, *values: tuple[str, str, float]) -> SampleRow:
    return SampleRow(seq=seq, timestamp_ms=NOW + seq * 1000, values=values or (
        ("cpu_percent", "", float(seq)),
        ("cpu_core_percent", "0", 1.0),
        ("cpu_core_percent", "1", 2.0),
    ))


@pytest.fixture(params=["sqlite"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens (and reopens) one database of the backend under test."""
    if request.param == "sqlite":
        url = sqlite_url(tmp_path / "state" / "fleet.db")
    return lambda: open_store(url)


@pytest.fixture
def store(opener: Opener) -> Iterator[FleetStore]:
    s = opener()
    yield s
    s.close()


@pytest.fixture
def enrolled(store: FleetStore) -> FleetStore:
    store.create_token(_token())
    store.enroll_device("t-abc", NOW, _device("d-1", "edge-1"))
    store.enroll_device("t-abc", NOW, _device("d-2", "edge-2"))
    return store


class TestFleetStore:
    # tokens
    def test_created_token_reads_back(self, store: FleetStore) -> None:
        store.create_token(_token())
        assert store.get_token("t-abc") == _token()
        assert store.get_token("t-nope") is None
        assert [t.id for t in store.list_tokens()] == ["t-abc"]

    def test_creating_a_token_twice_conflicts(self, store: FleetStore) -> None:
        store.create_token(_token())
        with pytest.raises(Conflict):
            store.create_token(_token())

    def test_revoke_marks_token_and_unknown_is_not_found(self, store: FleetStore) -> None:
        store.create_token(_token())
        assert store.revoke_token("t-abc").revoked
        with pytest.raises(NotFound):
            store.revoke_token("t-nope")

    # enrollment
    def test_enroll_counts_a_use_and_device_labels_win(self, store: FleetStore) -> None:
        store.create_token(_token())
        got = store.enroll_device("t-abc", NOW, _device(tier="gpu", room="3"))
        assert got.labels == {"site": "lab", "tier": "gpu", "room": "3"}
        assert store.get_device("d-1") == got
        assert _uses(store) == 1

    @pytest.mark.parametrize(
        ("token_id", "token", "reason", "words"),
        [
            ("t-nope", _token(), "unknown", "not known"),
            ("t-abc", _token(revoked=True), "revoked", "revoked"),
            ("t-abc", _token(expires_at_ms=NOW), "expired", "expired at 2027-01-15T08:00:00Z"),
            ("t-abc", _token(max_uses=2, uses=2), "used_up", "used 2 of 2 times"),
        ],
    )
    def test_token_reasons(
        self, store: FleetStore, token_id: str, token: TokenRecord, reason: str, words: str
    ) -> None:
        store.create_token(token)
        with pytest.raises(TokenRejected) as caught:
            store.enroll_device(token_id, NOW, _device())
        assert caught.value.reason == reason
        assert words in str(caught.value)
        assert "slmops token create" in str(caught.value)
        assert store.get_device("d-1") is None
        assert _uses(store) == token.uses

    def test_enroll_with_expired_token_creates_no_device(self, store: FleetStore) -> None:
        store.create_token(_token(expires_at_ms=NOW - 1))
        with pytest.raises(TokenRejected, match="expired"):
            store.enroll_device("t-abc", NOW, _device())
        assert store.list_devices(include_removed=True) == []

    def test_taken_name_conflicts_until_that_device_is_removed(self, enrolled: FleetStore) -> None:
        with pytest.raises(Conflict, match="'edge-1' is taken by device d-1"):
            enrolled.enroll_device("t-abc", NOW, _device("d-3", "edge-1"))
        assert _uses(enrolled) == 2
        enrolled.remove_device("d-1", NOW)
        assert enrolled.enroll_device("t-abc", NOW, _device("d-3", "edge-1")).id == "d-3"
        assert _dev(enrolled, "edge-1").id == "d-3"

    def test_reused_device_id_conflicts_and_counts_no_use(self, enrolled: FleetStore) -> None:
        with pytest.raises(Conflict, match="d-1"):
            enrolled.enroll_device("t-abc", NOW, _device("d-1", "edge-9"))
        assert _uses(enrolled) == 2
        assert _dev(enrolled, "d-1").name == "edge-1"

    # devices
    def test_find_device_by_id_or_active_name(self, enrolled: FleetStore) -> None:
        assert _dev(enrolled, "d-2").name == "edge-2"
        assert _dev(enrolled, "edge-2").id == "d-2"
        assert enrolled.find_device("edge-9") is None

    def test_list_devices_filters_by_selector_and_orders_by_name(self, store: FleetStore) -> None:
        store.create_token(_token())
        store.enroll_device("t-abc", NOW, _device("d-1", "zeta", room="1"))
        store.enroll_device("t-abc", NOW, _device("d-2", "alpha", room="1"))
        store.enroll_device("t-abc", NOW, _device("d-3", "mid", room="2"))
        assert [d.name for d in store.list_devices()] == ["alpha", "mid", "zeta"]
        assert [d.name for d in store.list_devices({"room": "1"})] == ["alpha", "zeta"]
        assert [d.name for d in store.list_devices({"room": "1", "site": "x"})] == []

    def test_removed_device_is_hidden_unless_asked(self, enrolled: FleetStore) -> None:
        assert enrolled.remove_device("d-1", NOW).removed_at_ms == NOW
        assert enrolled.remove_device("d-1", NOW + 5).removed_at_ms == NOW  # only once
        assert [d.id for d in enrolled.list_devices()] == ["d-2"]
        assert [d.id for d in enrolled.list_devices(include_removed=True)] == ["d-1", "d-2"]
        assert enrolled.find_device("edge-1") is None
        with pytest.raises(NotFound):
            enrolled.remove_device("d-nope", NOW)

    def test_update_labels_sets_removes_and_bumps_generation(self, enrolled: FleetStore) -> None:
        got = enrolled.update_labels("d-1", {"room": "4", "site": "hq"}, remove=["tier"])
        assert got.labels == {"room": "4", "site": "hq"}
        assert got.desired_generation == 2
        assert enrolled.get_device("d-1") == got
        with pytest.raises(NotFound):
            enrolled.update_labels("d-nope", {}, [])

    def test_record_hello_updates_what_the_agent_reports(self, enrolled: FleetStore) -> None:
        got = enrolled.record_hello("d-1", {"cpu": "x86_64"}, "0.2.0", "nuc", NOW + 7)
        assert (got.hardware, got.agent_version, got.profile) == ({"cpu": "x86_64"}, "0.2.0", "nuc")
        assert enrolled.get_device("d-1") == got
        assert got.last_seen_ms == NOW + 7

    def test_touch_never_moves_last_seen_backwards(self, enrolled: FleetStore) -> None:
        enrolled.touch_devices({"d-1": Touch(NOW + 50, 3), "d-2": Touch(NOW + 9), "d-x": Touch(1)})
        enrolled.touch_devices({"d-1": Touch(NOW + 10, None)})
        d1, d2 = _dev(enrolled, "d-1"), _dev(enrolled, "d-2")
        assert (d1.last_seen_ms, d1.spool_dropped_total) == (NOW + 50, 3)
        assert d2.last_seen_ms == NOW + 9

    # telemetry
    def test_duplicate_batch_is_stored_once(self, enrolled: FleetStore) -> None:
        batch = IngestItem("d-1", (_sample(1), _sample(2)))
        first, = enrolled.ingest([batch])
        again, = enrolled.ingest([batch])
        assert (first.acked_through_seq, first.stored, first.duplicates) == (2, 2, 0)
        assert (again.acked_through_seq, again.stored, again.duplicates) == (2, 0, 2)
        assert len(enrolled.query_points(["d-1"], "cpu_percent", 0, 2 * NOW)) == 2

    def test_overlapping_batches_in_one_call_store_each_sample_once(
        self, enrolled: FleetStore
    ) -> None:
        a = IngestItem("d-1", (_sample(1), _sample(2)))
        b = IngestItem("d-1", (_sample(2), _sample(3), _sample(3)))
        ra, rb = enrolled.ingest([a, b])
        assert (rb.acked_through_seq, rb.stored, rb.duplicates) == (3, 1, 2)
        assert len(enrolled.query_points(["d-1"], "cpu_percent", 0, 2 * NOW)) == 3

    def test_ingest_skips_unknown_metrics(self, enrolled: FleetStore) -> None:
        sample = _sample(1, ("cpu_percent", "", 5.0), ("cpu_pecrent", "", 6.0))
        result, = enrolled.ingest([IngestItem("d-1", (sample,))])
        assert result.stored == 1
        assert enrolled.query_points(["d-1"], "cpu_pecrent", 0, 2 * NOW) == []
        assert [p.value for p in enrolled.query_points(["d-1"], "cpu_percent", 0, 2 * NOW)] == [5.0]

    def test_ingest_for_unknown_or_removed_device_stores_nothing(
        self, enrolled: FleetStore
    ) -> None:
        enrolled.ingest([IngestItem("d-2", (_sample(1),))])
        enrolled.remove_device("d-2", NOW)
        results = enrolled.ingest([
            IngestItem("d-nope", (_sample(1),)),
            IngestItem("d-2", (_sample(2),)),
            IngestItem("d-1", (_sample(1),)),
        ])
        assert [(r.acked_through_seq, r.stored) for r in results] == [(0, 0), (1, 0), (1, 1)]
        assert len(enrolled.query_points(["d-2"], "cpu_percent", 0, 2 * NOW)) == 1

    def test_ingest_keeps_acked_seq_and_dropped_total_moving_forward(
        self, enrolled: FleetStore
    ) -> None:
        enrolled.ingest([IngestItem("d-1", (_sample(5),), dropped_total=7)])
        enrolled.ingest([IngestItem("d-1", (_sample(3),), dropped_total=2)])
        device = _dev(enrolled, "d-1")
        assert (device.acked_through_seq, device.spool_dropped_total) == (5, 7)

    def test_ingest_survives_reopen(self, opener: Opener) -> None:
        first = opener()
        first.create_token(_token())
        first.enroll_device("t-abc", NOW, _device())
        result, = first.ingest([IngestItem("d-1", (_sample(1), _sample(2)))])
        first.close()
        second = opener()
        try:
            assert _dev(second, "d-1").acked_through_seq == result.acked_through_seq
            assert len(second.query_points(["d-1"], "cpu_core_percent", 0, 2 * NOW)) == 4
            again, = second.ingest([IngestItem("d-1", (_sample(2), _sample(3)))])
            assert (again.stored, again.duplicates) == (1, 1)
        finally:
            second.close()

    def test_query_points_filters_and_orders(self, enrolled: FleetStore) -> None:
        enrolled.ingest([
            IngestItem("d-2", (_sample(1), _sample(2), _sample(3))),
            IngestItem("d-1", (_sample(1), _sample(2), _sample(3))),
        ])
        got = enrolled.query_points(["d-2", "d-1"], "cpu_core_percent", NOW + 2000, NOW + 3001)
        assert [(p.device_id, p.series, p.timestamp_ms) for p in got] == [
            (d, s, NOW + t) for d in ("d-1", "d-2") for s in ("0", "1") for t in (2000, 3000)
        ]
        assert enrolled.query_points(["d-1"], "cpu_core_percent", NOW + 2000, NOW + 3000)[0] \
            .metric == "cpu_core_percent"
        assert enrolled.query_points([], "cpu_percent", 0, 2 * NOW) == []

    def test_retention_deletes_only_old_points(self, enrolled: FleetStore) -> None:
        five = tuple(_sample(seq) for seq in range(1, 6))
        enrolled.ingest([IngestItem(d, five) for d in ("d-1", "d-2")])
        assert enrolled.apply_retention(NOW + 3000) == 2 * 2 * 3  # seq 1, 2 × 3 series × 2
        left = enrolled.query_points(["d-1", "d-2"], "cpu_percent", 0, 2 * NOW)
        assert sorted({p.timestamp_ms for p in left}) == [NOW + 3000, NOW + 4000, NOW + 5000]
        assert enrolled.apply_retention(NOW + 3000) == 0

    def test_threads_can_ingest_and_read_at_once(self, enrolled: FleetStore) -> None:
        errors: list[BaseException] = []

        def work(device_id: str) -> None:
            try:
                for seq in range(1, 21):
                    enrolled.ingest([IngestItem(device_id, (_sample(seq),))])
                    enrolled.touch_devices({device_id: Touch(NOW + seq)})
                    enrolled.list_devices()
            except BaseException as e:  # noqa: BLE001 - reported by the assert below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(d,)) for d in ("d-1", "d-2") * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert len(enrolled.query_points(["d-1", "d-2"], "cpu_percent", 0, 2 * NOW)) == 40


def test_sqlite_file_is_private_and_its_dir_is_created(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "fleet.db"
    open_store(sqlite_url(path)).close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("not a url", "not a database URL"),
        ("mysql://db/fleet", "does not support"),
        ("sqlite+nodriver:///x.db", "driver is installed"),
        ("sqlite:////proc/nope/fleet.db", "cannot"),
    ],
)
def test_bad_url_is_a_store_error_naming_it(
    url: str, words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # a relative path must not land in the repo
    with pytest.raises(StoreError, match=words):
        open_store(url)
    assert list(tmp_path.iterdir()) == []
