"""The rollout engine: an asyncio task of the controller that moves every running rollout on.

Every ``tick_s`` it runs one step of each running or paused rollout (waves.py, in a worker
thread, as it reads and writes the store and may hash a variant's files) and pushes the new
desired state down the stream of each device that step changed; a device that is offline gets
it from the store when it reconnects. The operator's actions (create, pause, resume, abort, roll
back) come through here too, so they are recorded with their actor in the audit trail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from controller.delivery.releases import Releases
from controller.hub import Hub
from controller.registry import ModelRegistry
from controller.rollouts.plan import RolloutSpec, plan
from controller.rollouts.states import RolloutDeviceState, RolloutEvent, RolloutState, transition
from controller.rollouts.waves import Limits, WaveStepper, event
from controller.services.fleet import desired_state
from controller.store import Conflict, DeviceRecord, FleetStore, NotFound
from controller.store.base import ReleaseRecord
from controller.store.rollouts import ACTIVE_STATES, RolloutRecord

log = logging.getLogger(__name__)



def _now() -> int:
    return int(time.time() * 1000)


class RolloutEngine:
    def __init__(self, store: FleetStore, releases: Releases, registry: ModelRegistry, hub: Hub,
                 *, tick_s: float = 0.5, limits: Limits | None = None) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s: {tick_s} is not positive")
        self._store, self._registry, self._hub, self._tick_s = store, registry, hub, tick_s
        self._stepper = WaveStepper(store, releases, hub.is_connected, limits or Limits())
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one step or operator action on the rollouts at a time

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rollout-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # logged: a bad step must not stop every rollout; retried
                log.exception("rollout engine tick failed")
            await asyncio.sleep(self._tick_s)

    async def tick(self) -> None:
        rollouts = await asyncio.to_thread(self._store.list_rollouts, ACTIVE_STATES)
        for rollout in reversed(rollouts):  # oldest first
            async with self._lock:
                pushes = await asyncio.to_thread(self._stepper.step, rollout, _now())
            await self._push(pushes)

    async def _push(self, device_ids: list[str]) -> None:
        """The new desired state down the stream of each connected device, read from the store
        in one worker thread for all of them (a rollback of 100 devices pushes 100 at once)."""
        connected = [(d, s) for d in dict.fromkeys(device_ids) if (s := self._hub.get(d)) is not None]

        def load() -> list[tuple[Any, DeviceRecord, ReleaseRecord | None]]:
            out = []
            for device_id, session in connected:
                device = self._store.get_device(device_id)
                if device is not None:
                    out.append((session, device, self._store.desired_manifest(device_id)))
            return out

        for session, device, manifest in await asyncio.to_thread(load):
            session.send(desired_state(device, manifest))

    # --- the operator's actions ----------------------------------------------------------------

    async def create(self, spec: RolloutSpec, actor: str) -> RolloutRecord:
        def run() -> RolloutRecord:
            now = _now()
            devices = self._store.list_devices(spec.selector, False)
            rollout, targets = plan(spec, devices, self._registry, actor, now)
            skipped = sum(1 for t in targets if t.status == RolloutDeviceState.SKIPPED)
            detail = (f"{rollout.model} to {len(targets) - skipped} device(s) in waves "
                      f"{'/'.join(map(str, rollout.wave_sizes))}; {skipped} skipped")
            return self._store.create_rollout(rollout, targets,
                                              event(rollout.id, actor, "created", detail, now))

        async with self._lock:
            return await asyncio.to_thread(run)

    async def transition(self, rollout_id: str, what: RolloutEvent, actor: str) -> RolloutRecord:
        """pause, resume or abort, by the transition table (states.py): IllegalTransition
        naming the state and the command when the rollout's state does not allow it."""
        now = _now()
        async with self._lock:
            current = await self._get(rollout_id)
            target = transition(current.state, what, rollout_id)
            action = what.audit_action
            done = await asyncio.to_thread(
                self._store.update_rollout, rollout_id, [current.state],
                event(rollout_id, actor, action, f"{action} by {actor}", now), state=target,
                updated_at_ms=now, **({"finished_at_ms": now} if target == RolloutState.ABORTED else {}))
            if done is None:  # another controller moved it meanwhile: judged on its new state
                transition((await self._get(rollout_id)).state, what, rollout_id)
                raise Conflict(f"rollout {rollout_id} changed while it was being {what.past}; "
                               "try again")
            return done

    async def roll_back(self, rollout_id: str, actor: str) -> RolloutRecord:
        async with self._lock:
            rollout = await self._get(rollout_id)
            pushes = await asyncio.to_thread(self._stepper.roll_back, rollout, actor, _now())
        await self._push(pushes)
        return await self._get(rollout_id)

    async def _get(self, rollout_id: str) -> RolloutRecord:
        found = await asyncio.to_thread(self._store.get_rollout, rollout_id)
        if found is None:
            raise NotFound(f"no rollout {rollout_id}; see `slmops rollout list`")
        return found
