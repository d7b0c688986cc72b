"""Which devices have a live stream to this controller, and a way to send each one a message.

Commands (``send_command``) are answered by a CommandResult with the same id on the device's
stream; a caller may wait for it. A waiter learns at once when the device's stream ends.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from dataclasses import dataclass, field

from protos import fleet_pb2


@dataclass
class Session:
    device_id: str
    outbox: asyncio.Queue[fleet_pb2.ConnectResponse | None] = field(
        default_factory=lambda: asyncio.Queue(maxsize=1024)
    )
    closed_reason: str = ""
    close_code: str = ""  # a grpc.StatusCode name when the stream must end with an error
    last_seen_ms: int = 0

    def send(self, message: fleet_pb2.ConnectResponse) -> bool:
        try:
            self.outbox.put_nowait(message)
            return True
        except asyncio.QueueFull:
            return False

    def close(self, reason: str, code: str = "") -> None:
        self.closed_reason = reason
        self.close_code = code
        try:
            self.outbox.put_nowait(None)
        except asyncio.QueueFull:
            pass


class DeviceOffline(Exception):
    """The device has no live stream (or it ended while a command was waiting)."""


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}
        # command id -> (device id, the waiter's future); only commands someone waits for
        self._waiting: dict[str, tuple[str, asyncio.Future[fleet_pb2.CommandResult]]] = {}

    def attach(self, device_id: str) -> Session:
        """A new stream for the device; an older one is closed (the newest stream wins)."""
        old = self._sessions.get(device_id)
        if old is not None:
            old.close("replaced by a newer stream from the same device")
        session = Session(device_id)
        self._sessions[device_id] = session
        return session

    def detach(self, session: Session) -> None:
        """The stream ended. Waiters of the device fail at once, unless a newer stream took
        over (its agent may still answer there)."""
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]
            reason = session.closed_reason or "stream ended"
            for command_id, (device_id, future) in list(self._waiting.items()):
                if device_id == session.device_id and not future.done():
                    future.set_exception(DeviceOffline(
                        f"device {device_id} disconnected before answering ({reason})"))
                    del self._waiting[command_id]

    def send_command(
        self, device_id: str, kind: str, args: dict[str, object], wait: bool = True
    ) -> tuple[str, asyncio.Future[fleet_pb2.CommandResult] | None]:
        """Send a command; returns its id and, if ``wait``, a future for its result (call
        ``forget`` when giving up on it). Raises DeviceOffline without a live stream."""
        session = self._sessions.get(device_id)
        if session is None:
            raise DeviceOffline(f"device {device_id} is offline (no stream to this controller)")
        command_id = "c-" + secrets.token_hex(8)
        command = fleet_pb2.Command(id=command_id, kind=kind, args_json=json.dumps(args))
        future: asyncio.Future[fleet_pb2.CommandResult] | None = None
        if wait:
            future = asyncio.get_running_loop().create_future()
            self._waiting[command_id] = (device_id, future)
        if not session.send(fleet_pb2.ConnectResponse(command=command)):
            self.forget(command_id)
            raise DeviceOffline(f"device {device_id} is not reading its stream (outbox full)")
        return command_id, future

    def command_done(self, device_id: str, result: fleet_pb2.CommandResult) -> bool:
        """Hand a device's result to its waiter; False if nobody waits (or another device's)."""
        entry = self._waiting.get(result.id)
        if entry is None or entry[0] != device_id:
            return False
        del self._waiting[result.id]
        if not entry[1].done():
            entry[1].set_result(result)
        return True

    def forget(self, command_id: str) -> None:
        self._waiting.pop(command_id, None)

    def get(self, device_id: str) -> Session | None:
        return self._sessions.get(device_id)

    def is_connected(self, device_id: str) -> bool:
        return device_id in self._sessions

    def disconnect(self, device_id: str, reason: str, code: str = "") -> None:
        session = self._sessions.get(device_id)
        if session is not None:
            session.close(reason, code)

    def close_all(self, reason: str) -> None:
        for session in list(self._sessions.values()):
            session.close(reason)

    def __len__(self) -> int:
        return len(self._sessions)
