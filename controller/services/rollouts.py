"""AdminService's rollout calls (a mixin of AdminServicer): thin, they check the request, call
the rollout engine (controller/rollouts/engine.py) and turn its records into messages. The actor
of every action is the admin certificate's CN, never a field of the request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import grpc

from agent.delivery.phases import to_proto as phase_to_proto
from controller import validation
from controller.hub import Hub
from controller.rollouts.engine import RolloutEngine
from controller.rollouts.plan import RolloutSpec
from controller.rollouts.states import (
    ACTIVE_STATES,
    UNSETTLED,
    IllegalTransition,
    RolloutDeviceState,
    RolloutEvent,
    RolloutState,
    WaveState,
    device_state_to_proto,
    rollout_state_from_proto,
    rollout_state_to_proto,
    wave_state_to_proto,
)
from controller.services.common import maps_errors_with, peer_cert, require_admin, status_for
from controller.store import Conflict, FleetStore
from controller.store.rollouts import GATE_NAMES, RolloutDeviceRecord, RolloutEventRecord, RolloutRecord
from protos import rollout_pb2

# Each RPC types its request and response itself.
Context = grpc.aio.ServicerContext[Any, Any]

DEFAULT_OFFLINE_TIMEOUT_MS = 300_000


class RolloutsUnavailable(Exception):
    pass


def _status(e: Exception) -> grpc.StatusCode | None:
    if isinstance(e, Conflict | RolloutsUnavailable | IllegalTransition):  # the state forbids it
        return grpc.StatusCode.FAILED_PRECONDITION
    from controller.delivery.releases import ReleaseRefused

    if isinstance(e, ReleaseRefused):
        return grpc.StatusCode.FAILED_PRECONDITION
    return status_for(e)


maps_rollout_errors = maps_errors_with(_status)


def _rollout_id(value: str) -> str:
    if not (len(value) == 14 and value.startswith("r-") and all(c in "0123456789abcdef"
                                                                  for c in value[2:])):
        raise validation.Invalid(f"id: {value[:40]!r} is not a rollout id (r- and 12 hex digits); "
                                 "see `slmops rollout list`")
    return value


def _wave_state(rollout: RolloutRecord, index: int, unsettled: int) -> WaveState:
    if index < rollout.current_wave:
        return WaveState.PASSED
    if index > rollout.current_wave:
        return WaveState.PENDING if rollout.state in ACTIVE_STATES else WaveState.STOPPED
    if rollout.state == RolloutState.SUCCEEDED:
        return WaveState.PASSED
    if rollout.state in (RolloutState.HALTED, RolloutState.ROLLED_BACK) and rollout.reason:
        return WaveState.HALTED
    if rollout.state not in ACTIVE_STATES:
        return WaveState.STOPPED
    if not rollout.wave_started_ms:
        return WaveState.PENDING
    return WaveState.RUNNING if unsettled or not rollout.bake_started_ms else WaveState.BAKING


def rollout_to_proto(r: RolloutRecord, devices: list[RolloutDeviceRecord] | None = None,
                     events: list[RolloutEventRecord] | None = None, store: FleetStore | None = None,
                     online: Callable[[str], bool] | None = None) -> rollout_pb2.Rollout:
    out = rollout_pb2.Rollout(
        id=r.id, model=r.model, selector=dict(r.selector), waves_spec=r.waves_spec,
        bake_ms=r.bake_ms, max_failure=r.max_failure, gates=rollout_pb2.RolloutGates(**r.gates),
        auto_rollback=r.auto_rollback, offline_timeout_ms=r.offline_timeout_ms,
        offline_policy=r.offline_policy, rollout_state=rollout_state_to_proto(r.state),
        current_wave=r.current_wave, reason=r.reason,
        created_by=r.created_by, created_at_ms=r.created_at_ms, updated_at_ms=r.updated_at_ms,
        finished_at_ms=r.finished_at_ms, bake_started_ms=r.bake_started_ms)
    for result in r.gate_results:
        gate = rollout_pb2.GateResult(
            gate=result["gate"], device_id=result["device_id"], device_name=result["device_name"],
            passed=result["passed"], detail=result.get("detail", ""))
        for key in ("value", "limit"):
            if result.get(key) is not None:
                setattr(gate, key, float(result[key]))
        out.gate_results.append(gate)
    for index, size in enumerate(r.wave_sizes):
        wave = [d for d in devices or [] if d.wave == index]
        unsettled = sum(1 for d in wave if d.status in UNSETTLED)
        out.waves.append(rollout_pb2.RolloutWave(
            index=index, size=size, wave_state=wave_state_to_proto(_wave_state(r, index, unsettled)),
            active=sum(1 for d in wave if d.status == RolloutDeviceState.ACTIVE),
            failed=sum(1 for d in wave if d.status == RolloutDeviceState.FAILED), pending=unsettled))
    for d in devices or []:
        record = store.get_device(d.device_id) if store is not None else None
        out.devices.append(rollout_pb2.RolloutDevice(
            device_id=d.device_id, device_name=d.device_name, wave=d.wave, profile=d.profile,
            state=device_state_to_proto(d.status), release=d.release, previous_release=d.previous_release,
            previous_model=d.previous_model, reason=d.reason,
            figures_json=json.dumps(dict(d.figures), sort_keys=True),
            deployment_phase=phase_to_proto(record.deployment.phase if record else ""),
            online=bool(online and online(d.device_id)), updated_at_ms=d.updated_at_ms))
    for e in events or []:
        out.events.append(rollout_pb2.RolloutEvent(at_ms=e.at_ms, actor=e.actor, action=e.action,
                                                   detail=e.detail))
    return out


class RolloutOpsMixin:
    _store: FleetStore
    _rollouts: RolloutEngine | None
    _hub: Hub

    def _engine(self) -> RolloutEngine:
        if self._rollouts is None:
            raise RolloutsUnavailable("this controller was started without model delivery, so it "
                                      "runs no rollouts")
        return self._rollouts

    async def _full(self, rollout_id: str) -> rollout_pb2.Rollout:
        def load() -> rollout_pb2.Rollout:
            record = self._store.get_rollout(rollout_id)
            if record is None:
                from controller.store import NotFound

                raise NotFound(f"no rollout {rollout_id}; see `slmops rollout list`")
            return rollout_to_proto(record, self._store.rollout_devices(rollout_id),
                                    self._store.rollout_events(rollout_id), self._store,
                                    self._hub.is_connected)
        return await asyncio.to_thread(load)

    @staticmethod
    def _actor(context: Context) -> str:
        cert = peer_cert(context)
        return cert.common_name if cert is not None else "unknown"

    @maps_rollout_errors
    async def CreateRollout(self, request: rollout_pb2.CreateRolloutRequest,
                            context: Context) -> rollout_pb2.CreateRolloutResponse:
        await require_admin(context)
        if not request.model:
            raise validation.Invalid("model: give the model as NAME:VERSION; see `slmops models list`")
        gates = {name: getattr(request.gates, name) for name in GATE_NAMES
                 if request.gates.HasField(name)}
        spec = RolloutSpec(
            model=validation.text("model", request.model, 320),
            selector=validation.labels("selector", request.selector),
            waves=validation.text("waves", request.waves or "1,25%,100%", 255),
            bake_ms=request.bake_ms, max_failure=request.max_failure or "0", gates=gates,
            auto_rollback=not request.no_auto_rollback,
            offline_timeout_ms=request.offline_timeout_ms or DEFAULT_OFFLINE_TIMEOUT_MS,
            offline_policy=request.offline_policy or RolloutDeviceState.FAILED)
        rollout = await self._engine().create(spec, self._actor(context))
        return rollout_pb2.CreateRolloutResponse(rollout=await self._full(rollout.id))

    @maps_rollout_errors
    async def GetRollout(self, request: rollout_pb2.GetRolloutRequest,
                         context: Context) -> rollout_pb2.GetRolloutResponse:
        await require_admin(context)
        return rollout_pb2.GetRolloutResponse(rollout=await self._full(_rollout_id(request.id)))

    @maps_rollout_errors
    async def ListRollouts(self, request: rollout_pb2.ListRolloutsRequest,
                           context: Context) -> rollout_pb2.ListRolloutsResponse:
        await require_admin(context)
        try:
            states = [rollout_state_from_proto(s) for s in request.rollout_states]
        except ValueError as e:
            raise validation.Invalid(f"rollout_states: {e}") from None
        records = await asyncio.to_thread(self._store.list_rollouts, states)
        return rollout_pb2.ListRolloutsResponse(rollouts=[rollout_to_proto(r) for r in records])

    async def _act(self, request: rollout_pb2.RolloutActionRequest, context: Context,
                   what: RolloutEvent) -> rollout_pb2.RolloutActionResponse:
        await require_admin(context)
        rollout_id, actor = _rollout_id(request.id), self._actor(context)
        if what == RolloutEvent.ROLL_BACK:
            await self._engine().roll_back(rollout_id, actor)
        else:
            await self._engine().transition(rollout_id, what, actor)
        return rollout_pb2.RolloutActionResponse(rollout=await self._full(rollout_id))

    @maps_rollout_errors
    async def PauseRollout(self, request: rollout_pb2.RolloutActionRequest,
                           context: Context) -> rollout_pb2.RolloutActionResponse:
        return await self._act(request, context, RolloutEvent.PAUSE)

    @maps_rollout_errors
    async def ResumeRollout(self, request: rollout_pb2.RolloutActionRequest,
                            context: Context) -> rollout_pb2.RolloutActionResponse:
        return await self._act(request, context, RolloutEvent.RESUME)

    @maps_rollout_errors
    async def AbortRollout(self, request: rollout_pb2.RolloutActionRequest,
                           context: Context) -> rollout_pb2.RolloutActionResponse:
        return await self._act(request, context, RolloutEvent.ABORT)

    @maps_rollout_errors
    async def RollbackRollout(self, request: rollout_pb2.RolloutActionRequest,
                              context: Context) -> rollout_pb2.RolloutActionResponse:
        return await self._act(request, context, RolloutEvent.ROLL_BACK)

