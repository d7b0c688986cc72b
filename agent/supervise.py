"""Background tasks that never fail silently.

Every long-lived task of the agent (telemetry sampling, the release in progress) runs under one
of these: a crash is logged with its traceback and either restarts the task after a bounded,
jittered backoff (:func:`supervised`) or is at least logged the moment it happens
(:func:`log_failure`), so no exception ends in asyncio's "Task exception was never retrieved".
asyncio has no supervisor of its own (TaskGroup cancels everything on the first failure, which
is the opposite of what a device that must keep serving wants), so this is hand-written.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from agent.link import backoff_delay

log = logging.getLogger(__name__)


async def supervised(name: str, run: Callable[[], Awaitable[None]], *, min_backoff_s: float = 0.5,
                     max_backoff_s: float = 30.0, rng: random.Random | None = None) -> None:
    """Run ``run()`` until it returns; when it raises, log the traceback and start it again
    after a backoff that doubles up to ``max_backoff_s`` (reset once a run lasted a minute)."""
    rng = rng or random.Random()
    attempt = 0
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        try:
            await run()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            if loop.time() - started > 60.0:
                attempt = 0
            delay = backoff_delay(attempt, min_backoff_s, max_backoff_s, rng)
            attempt += 1
            log.exception("background task %r crashed (crash %d); restarting it in %.1f s",
                          name, attempt, delay)
            await asyncio.sleep(delay)


def log_failure(name: str) -> Callable[[asyncio.Task[object]], None]:
    """A done-callback that logs a task's exception with its traceback (and so retrieves it)."""
    def done(task: asyncio.Task[object]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            log.error("background task %r failed", name, exc_info=error)
    return done
