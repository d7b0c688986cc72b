"""Which devices have a live stream to this controller, and a way to send each one a message."""

from __future__ import annotations

import asyncio
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


class Hub:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def attach(self, device_id: str) -> Session:
        """A new stream for the device; an older one is closed (the newest stream wins)."""
        old = self._sessions.get(device_id)
        if old is not None:
            old.close("replaced by a newer stream from the same device")
        session = Session(device_id)
        self._sessions[device_id] = session
        return session

    def detach(self, session: Session) -> None:
        if self._sessions.get(session.device_id) is session:
            del self._sessions[session.device_id]

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
