"""The bridge between a generation's worker thread and the request's task: pieces arrive whole
and in order, the first at once, the end of the answer without waiting out a pause between
chunks, and a fast generation never stalls for room."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from agent.engine.engine import Piece
from agent.serve import bridge as bridge_module
from agent.serve.bridge import AHEAD, Bridge

LONG_PAUSE_S = 60.0  # far longer than any test here may wait: a test that waits it out times out


def _collect(pieces: int, *, streaming: bool = True, pause_after_first_s: float = 0.0) -> list[list[str]]:
    """Run a worker thread handing ``pieces`` pieces (then the end) to a Bridge; the batches the
    request's side gets, as lists of texts."""

    async def run() -> list[list[str]]:
        stream = SimpleNamespace(cancelled=False)  # what the bridge reads of a Stream
        bridge = Bridge(asyncio.get_running_loop(), stream, streaming=streaming)

        def worker() -> None:
            for i in range(pieces):
                if stream.cancelled:
                    return
                bridge.piece(Piece(f"t{i} ", i))
                if i == 0 and pause_after_first_s:
                    time.sleep(pause_after_first_s)
            bridge.done(None)

        thread = threading.Thread(target=worker)
        thread.start()
        try:
            return [[p.text for p in batch] async for batch in bridge.batches()]
        finally:
            stream.cancelled = True  # a worker still waiting for room gives up (a test timed out)
            thread.join()

    return asyncio.run(asyncio.wait_for(run(), 20))


@pytest.fixture
def long_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bridge_module, "COALESCE_S", LONG_PAUSE_S)


def test_the_first_piece_goes_at_once_and_the_end_does_not_wait_out_the_pause(long_pause: None) -> None:
    batches = _collect(5, pause_after_first_s=0.3)
    assert batches[0] == ["t0 "]  # alone: it went out before the others were made
    assert [t for batch in batches for t in batch] == [f"t{i} " for i in range(5)]


def test_a_fast_generation_does_not_wait_for_room(long_pause: None) -> None:
    """Ten windows of pieces in one go: each half window ends the pause early, so the worker
    never waits for the request's side to come back from a pause."""
    batches = _collect(10 * AHEAD)
    assert [t for batch in batches for t in batch] == [f"t{i} " for i in range(10 * AHEAD)]
    assert all(len(batch) <= AHEAD for batch in batches)


def test_an_answer_not_streamed_comes_as_one_batch_at_the_end(long_pause: None) -> None:
    assert _collect(3 * AHEAD, streaming=False) == [[f"t{i} " for i in range(3 * AHEAD)]]
