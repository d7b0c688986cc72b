"""Run ``slmops <args>`` (the controller) instrumented, for bench/fleet_scale.py --profile.

Nothing outside bench/ changes: hooks are put in place at runtime, by this process only.
``$SLMOPS_BENCH_PROFILE`` is the output base path; ``$SLMOPS_BENCH_PROFILE_MODE`` picks:

- ``timing`` (cheap): wall and thread-CPU time of every ``store.ingest`` call, of SQLite's
  execute/executemany/commit, of ``batch_to_item``, the time each stream waits in
  ``IngestWriter.submit`` (queue + commit), the event loop's lag, and every garbage
  collection (``gc.genN``; they stop every thread). Raw records with
  wall-clock stamps go to ``BASE.timing.json``; fleet_scale.py summarizes the steady window.
- ``cprofile``: cProfile of the event-loop thread and of the ingest writer thread, separately
  (cProfile sees only the thread it is enabled in; the writer's ThreadPoolExecutor is swapped
  for one whose worker enables its own profiler). ``BASE.*.prof`` and a summary ``BASE.txt``.
"""

from __future__ import annotations

import asyncio
import cProfile
import functools
import gc
import io
import json
import os
import pstats
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bench.controller_proc import PROFILE_ENV

MODE_ENV = "SLMOPS_BENCH_PROFILE_MODE"
_profiles: dict[str, cProfile.Profile] = {}
_records: dict[str, list[tuple[float, ...]]] = defaultdict(list)  # kind -> (stamp, ...)
_lock = threading.Lock()


# cProfile mode
def _enable_in_thread() -> None:
    prof = cProfile.Profile()
    with _lock:
        _profiles[f"writer-{threading.get_ident()}"] = prof
    prof.enable()


class ProfiledExecutor(ThreadPoolExecutor):
    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("initializer", _enable_in_thread)
        super().__init__(*args, **kwargs)


def _dump_profiles(base: str) -> None:
    text = io.StringIO()
    for name, prof in sorted(_profiles.items()):
        prof.disable()
        prof.dump_stats(f"{base}.{name}.prof")
        text.write(f"==== {name}: by own time ====\n")
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(40)
        text.write(f"==== {name}: by cumulative time ====\n")
        pstats.Stats(prof, stream=text).sort_stats("cumulative").print_stats(60)
    with open(f"{base}.txt", "w") as f:
        f.write(text.getvalue())


# timing mode
def _timed_sync(kind: str, fn: Any, extra: Any = None) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        stamp, w0, c0 = time.time(), time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            more = extra(*args) if extra else ()
            _records[kind].append((stamp, time.perf_counter() - w0, time.thread_time() - c0,
                                   *more))
    return wrapper


def _ingest_size(_self: Any, items: list[Any]) -> tuple[int, int, int]:
    samples = sum(len(i.samples) for i in items)
    return len(items), samples, sum(len(s.values) for i in items for s in i.samples)


def _install_timing() -> None:
    from sqlalchemy.dialects.sqlite.base import SQLiteDialect

    import controller.server
    import controller.services.fleet as fleet
    from controller.ingest import IngestWriter
    from controller.store.sql import SqlFleetStore

    SqlFleetStore.ingest = _timed_sync("ingest", SqlFleetStore.ingest, _ingest_size)
    fleet.batch_to_item = _timed_sync("batch_to_item", fleet.batch_to_item)
    for name in ("do_execute", "do_executemany", "do_commit"):
        setattr(SQLiteDialect, name, _timed_sync(f"sqlite.{name}", getattr(SQLiteDialect, name)))

    submit = IngestWriter.submit

    async def timed_submit(self: IngestWriter, item: Any) -> Any:
        stamp, w0 = time.time(), time.perf_counter()
        try:
            return await submit(self, item)
        finally:
            _records["submit_wait"].append((stamp, time.perf_counter() - w0, 0.0,
                                            self._queue.qsize()))

    IngestWriter.submit = timed_submit

    start = controller.server.Controller.start

    async def start_with_lag_probe(self: Any) -> Any:
        endpoints = await start(self)
        self._bench_lag = asyncio.create_task(_loop_lag())
        return endpoints

    controller.server.Controller.start = start_with_lag_probe

    began: dict[int, tuple[float, float]] = {}

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[info["generation"]] = (time.time(), time.perf_counter())
        elif info["generation"] in began:
            stamp, w0 = began.pop(info["generation"])
            _records[f"gc.gen{info['generation']}"].append(
                (stamp, time.perf_counter() - w0, 0.0, info.get("collected", 0)))

    gc.callbacks.append(on_gc)


async def _loop_lag(period: float = 0.05) -> None:
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(period)
        _records["loop_lag"].append((time.time(), loop.time() - before - period, 0.0))


def _dump_timing(base: str) -> None:
    with open(f"{base}.timing.json", "w") as f:
        json.dump(_records, f)


def main() -> None:
    base = os.environ[PROFILE_ENV]
    mode = os.environ.get(MODE_ENV, "timing")
    import controller.ingest
    from controller.cli.main import cli

    if mode == "cprofile":
        controller.ingest.ThreadPoolExecutor = ProfiledExecutor
        loop_prof = cProfile.Profile()
        _profiles["loop"] = loop_prof
        loop_prof.enable()
    elif mode == "timing":
        _install_timing()
    else:
        sys.exit(f"{MODE_ENV}: {mode!r} is not 'timing' or 'cprofile'")
    try:
        cli.main(args=sys.argv[1:], prog_name="slmops", obj={}, standalone_mode=False)
    finally:
        if mode == "cprofile":
            _dump_profiles(base)
        else:
            _dump_timing(base)


if __name__ == "__main__":
    main()
