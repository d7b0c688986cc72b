"""Stop sequences, matched in the generated text (not in tokens: a stop string can start or end
inside a token). Text that might be the start of a stop sequence is held back until the next
piece shows whether it is, so no part of a stop sequence ever reaches the client."""

from __future__ import annotations


class StopMatcher:
    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self.held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to emit now, whether a stop sequence was hit). After a hit, the text up
        to the stop sequence is emitted and the rest dropped."""
        if not self.stops:
            return text, False
        buffer = self.held + text
        hits = [at for at in (buffer.find(stop) for stop in self.stops) if at >= 0]
        if hits:
            self.held = ""
            return buffer[:min(hits)], True
        keep = self._partial_suffix(buffer)
        self.held = buffer[len(buffer) - keep:] if keep else ""
        return buffer[:len(buffer) - keep], False

    def flush(self) -> str:
        """What was held back, at the end of generation (it never became a stop sequence)."""
        text, self.held = self.held, ""
        return text

    def _partial_suffix(self, buffer: str) -> int:
        """The length of the longest suffix of ``buffer`` that is a proper prefix of a stop."""
        best = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:size]):
                    best = size
                    break
        return best
