"""The server-sent events OpenAI's streaming format is made of."""

from __future__ import annotations

import json
from typing import Any

from agent.engine.engine import Stream


def event(data: Any) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


def usage(stream: Stream) -> dict[str, int]:
    return {"prompt_tokens": stream.prompt_tokens, "completion_tokens": stream.completion_tokens,
            "total_tokens": stream.prompt_tokens + stream.completion_tokens}


class Chunks:
    """The chunks of one streamed answer: chat.completion.chunk deltas or text_completion
    texts, with ``"usage": null`` on each when the client asked for usage at the end."""

    def __init__(self, head: dict[str, Any], chat: bool, include_usage: bool) -> None:
        self.head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        self.chat, self.include_usage = chat, include_usage

    def _chunk(self, choice: dict[str, Any], finish: str | None) -> bytes:
        extra = {"usage": None} if self.include_usage else {}
        return event({**self.head, "choices": [{**choice, "index": 0, "logprobs": None,
                                                "finish_reason": finish}], **extra})

    def role(self) -> bytes:
        return self._chunk({"delta": {"role": "assistant", "content": ""}}, None)

    def text(self, text: str) -> bytes:
        return self._chunk({"delta": {"content": text}} if self.chat else {"text": text}, None)

    def finish(self, reason: str | None) -> bytes:
        return self._chunk({"delta": {}} if self.chat else {"text": ""}, reason)

    def usage(self, stream: Stream) -> bytes:
        return event({**self.head, "choices": [], "usage": usage(stream)})
