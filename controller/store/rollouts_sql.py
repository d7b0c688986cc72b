"""The SQL side of RolloutStore, mixed into SqlFleetStore (it uses its ``_write``/``_read``).

Kept apart from sql.py so each file has one job: this one turns rollout records into rows of
the ``rollouts``, ``rollout_devices`` and ``rollout_events`` tables (schema.py) and back.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, replace
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select, update

from controller.rollouts.states import RolloutDeviceState
from controller.store.rollouts import (
    ACTIVE_STATES,
    RolloutDeviceRecord,
    RolloutEventRecord,
    RolloutRecord,
)
from controller.store.schema import rollout_devices, rollout_events, rollouts

_JSON_ROLLOUT = ("selector", "wave_sizes", "gates", "gate_results")
# held by an active rollout
_CHANGES_THE_DEVICE = (RolloutDeviceState.PENDING, RolloutDeviceState.ASSIGNED, RolloutDeviceState.ACTIVE)


def _rollout(row: Row[Any]) -> RolloutRecord:
    m = dict(row._mapping)
    for key in _JSON_ROLLOUT:
        m[key] = json.loads(m[key])
    m["wave_sizes"] = tuple(m["wave_sizes"])
    m["gate_results"] = tuple(m["gate_results"])
    m["auto_rollback"] = bool(m["auto_rollback"])
    return RolloutRecord(**m)


def _rollout_values(r: RolloutRecord | dict[str, Any]) -> dict[str, Any]:
    values = asdict(r) if isinstance(r, RolloutRecord) else dict(r)
    for key in _JSON_ROLLOUT:
        if key in values:
            value = values[key]
            values[key] = json.dumps(list(value) if isinstance(value, tuple) else value, sort_keys=True)
    return values


def _device(row: Row[Any]) -> RolloutDeviceRecord:
    m = dict(row._mapping)
    m["figures"] = json.loads(m["figures"])
    return RolloutDeviceRecord(**m)


def _device_values(d: RolloutDeviceRecord | dict[str, Any]) -> dict[str, Any]:
    values = asdict(d) if isinstance(d, RolloutDeviceRecord) else dict(d)
    if "figures" in values:
        values["figures"] = json.dumps(values["figures"], sort_keys=True)
    return values


class SqlRolloutsMixin:
    _write: Any  # SqlFleetStore's: () -> context manager of a write Connection
    _read: Any

    def _rollout_write(self) -> AbstractContextManager[Connection]:
        return self._write()  # type: ignore[no-any-return]  # _write is the mixing class's, typed there

    def create_rollout(self, rollout: RolloutRecord, devices: Sequence[RolloutDeviceRecord],
                       event: RolloutEventRecord) -> RolloutRecord:
        from controller.store.base import Conflict

        changing = sorted(d.device_id for d in devices if d.status in _CHANGES_THE_DEVICE)
        names = {d.device_id: d.device_name for d in devices}
        with self._rollout_write() as conn:
            held: dict[str, list[str]] = {}
            for i in range(0, len(changing), 500):
                stmt = (select(rollout_devices.c.rollout_id, rollout_devices.c.device_id)
                        .select_from(rollout_devices.join(
                            rollouts, rollouts.c.id == rollout_devices.c.rollout_id))
                        .where(rollouts.c.state.in_(ACTIVE_STATES),
                               rollout_devices.c.status.in_(_CHANGES_THE_DEVICE),
                               rollout_devices.c.device_id.in_(changing[i:i + 500])))
                for rid, did in conn.execute(stmt):
                    held.setdefault(rid, []).append(names.get(did) or did)
            if held:
                parts = "; ".join(f"rollout {rid} holds {', '.join(sorted(ds))}"
                                  for rid, ds in sorted(held.items()))
                raise Conflict(f"these devices are in an active rollout already: {parts}; wait for "
                               "it to finish, or abort it with `slmops rollout abort ID`")
            conn.execute(insert(rollouts).values(_rollout_values(rollout)))
            if devices:
                conn.execute(insert(rollout_devices), [_device_values(d) for d in devices])
            conn.execute(insert(rollout_events).values(asdict(event)))
        return rollout

    def get_rollout(self, rollout_id: str) -> RolloutRecord | None:
        with self._read() as conn:
            row = conn.execute(select(rollouts).where(rollouts.c.id == rollout_id)).first()
        return None if row is None else _rollout(row)

    def list_rollouts(self, states: Sequence[str] = ()) -> list[RolloutRecord]:
        stmt = select(rollouts).order_by(rollouts.c.created_at_ms.desc(), rollouts.c.id)
        if states:
            stmt = stmt.where(rollouts.c.state.in_(list(states)))
        with self._read() as conn:
            return [_rollout(r) for r in conn.execute(stmt)]

    def rollout_devices(self, rollout_id: str) -> list[RolloutDeviceRecord]:
        stmt = (select(rollout_devices).where(rollout_devices.c.rollout_id == rollout_id)
                .order_by(rollout_devices.c.wave, rollout_devices.c.device_name))
        with self._read() as conn:
            found = [_device(r) for r in conn.execute(stmt)]
        return sorted(found, key=lambda d: (d.wave < 0, d.wave, d.device_name))  # skipped last

    def rollout_events(self, rollout_id: str) -> list[RolloutEventRecord]:
        stmt = (select(rollout_events).where(rollout_events.c.rollout_id == rollout_id)
                .order_by(rollout_events.c.id))
        with self._read() as conn:
            return [RolloutEventRecord(**{k: v for k, v in r._mapping.items() if k != "id"})
                    for r in conn.execute(stmt)]

    def count_in_flight(self) -> int:
        stmt = (select(func.count()).select_from(rollout_devices.join(
            rollouts, rollouts.c.id == rollout_devices.c.rollout_id))
            .where(rollouts.c.state.in_(ACTIVE_STATES),
                   rollout_devices.c.status == RolloutDeviceState.ASSIGNED))
        with self._read() as conn:
            return int(conn.execute(stmt).scalar_one())

    def update_rollout(self, rollout_id: str, expect_states: Sequence[str],
                       event: RolloutEventRecord | None = None, **changes: Any) -> RolloutRecord | None:
        from controller.store.base import NotFound

        where = rollouts.c.id == rollout_id
        with self._rollout_write() as conn:
            row = conn.execute(select(rollouts).where(where)).first()
            if row is None:
                raise NotFound(f"no rollout {rollout_id}; see `slmops rollout list`")
            current = _rollout(row)
            if expect_states and current.state not in expect_states:
                return None
            if changes:
                conn.execute(update(rollouts).where(where).values(_rollout_values(changes)))
            if event is not None:
                conn.execute(insert(rollout_events).values(asdict(event)))
        return replace(current, **changes)

    def update_rollout_device(self, rollout_id: str, device_id: str, expect_statuses: Sequence[str],
                              **changes: Any) -> bool:
        stmt = update(rollout_devices).where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == device_id)
        if expect_statuses:
            stmt = stmt.where(rollout_devices.c.status.in_(list(expect_statuses)))
        with self._rollout_write() as conn:
            return bool(conn.execute(stmt.values(_device_values(changes))).rowcount)

    def _claim_for_rollout(self, conn: Connection, rollout_id: str, device_id: str, release: int,
                           now_ms: int) -> None:
        """Within add_release's transaction: pending -> assigned with ``release``."""
        from controller.store.base import Conflict

        done = conn.execute(update(rollout_devices).where(
            rollout_devices.c.rollout_id == rollout_id, rollout_devices.c.device_id == device_id,
            rollout_devices.c.status == RolloutDeviceState.PENDING).values(
                status=RolloutDeviceState.ASSIGNED, release=release, assigned_at_ms=now_ms,
                updated_at_ms=now_ms))
        if done.rowcount != 1:
            raise Conflict(f"device {device_id} is not pending in rollout {rollout_id}; it was "
                           "assigned already (or left the rollout)")

