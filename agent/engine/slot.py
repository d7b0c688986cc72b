"""The model the agent serves right now, swapped without a restart.

``ModelSlot.load`` loads the new variant completely before it takes the old one's place, in one
assignment under a lock, so a request sees either the old engine or the new one, never none.
``ModelSlot.install`` does that last step alone, for an engine loaded and checked elsewhere (the
updater gates a staged variant on this hardware before it goes live).
A load that fails (missing or corrupt file) leaves the old engine serving and is remembered in
``last_error``. Requests already running on the old engine finish on it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from agent.engine.engine import Engine
from agent.engine.variant import VariantError, registered_name


class NoModel(LookupError):
    """No model is loaded."""


@dataclass(frozen=True)
class Loaded:
    engine: Engine
    name: str  # the model id clients send ("model" in OpenAI requests)
    version: str
    loaded_at: float  # unix time
    load_seconds: float


class ModelSlot:
    def __init__(self, *, threads: int | None = None) -> None:
        self._threads = threads
        self._lock = threading.Lock()
        self._current: Loaded | None = None
        self.last_error: str | None = None

    @property
    def current(self) -> Loaded | None:
        return self._current

    def get(self) -> Loaded:
        current = self._current
        if current is None:
            raise NoModel("no model is loaded")
        return current

    def load(self, variant_dir: Path, *, name: str | None = None, version: str = "") -> Loaded:
        """Load ``variant_dir`` and make it the served model (blocking; call it from a worker
        thread in async code). Raises VariantError and keeps the previous model on failure.
        Without ``name`` the model is named as a delivery names it: the registered model's name
        and version its slmops-variant.json records, else the directory's name."""
        started = time.perf_counter()
        try:
            if name is None:
                name, recorded = registered_name(Path(variant_dir))
                version = version or recorded
            engine = Engine.load(Path(variant_dir), threads=self._threads)
        except VariantError as e:
            self.last_error = str(e)
            raise
        return self.install(engine, name=name, version=version,
                            load_seconds=time.perf_counter() - started)

    def install(self, engine: Engine, *, name: str | None, version: str, load_seconds: float) -> Loaded:
        """Make an engine that is already loaded (and, for a delivery, gated) the served model:
        one assignment under the lock, then the old engine is closed. Streams already running on
        the old engine finish on it; new requests get this one."""
        loaded = Loaded(engine, name or engine.info.name, version, time.time(), load_seconds)
        with self._lock:
            old, self._current = self._current, loaded
            self.last_error = None
        if old is not None and old.engine is not engine:
            old.engine.close()
        return loaded

    def unload(self) -> None:
        with self._lock:
            old, self._current = self._current, None
        if old is not None:
            old.engine.close()
