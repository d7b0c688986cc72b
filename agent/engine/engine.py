"""The agent's inference engine: one model variant loaded on this device, streaming generation.

A variant runs on one of two runtimes, chosen by check_variant from its files: onnxruntime-genai
(genai_runtime.py; variants of onnxruntime-genai's model builder) or a plain onnxruntime decode
loop (ort_runtime.py and ort_loop.py; the fallback route, ``"runtime": "onnxruntime"``). Both sit
behind :class:`Runtime`; everything a caller sees (parameters, streaming, stop sequences,
incremental decoding, cancelling, errors) is this module's, the same for both.

Threading: one ``Engine`` serves any number of threads at once. Each ``stream`` call gets its
own generation (its own KV cache) over the shared model; both runtimes run separate generations
from separate threads and release the GIL while they compute. The tokenizer is shared behind a
lock (encoding is short). A ``Stream`` itself belongs to the thread that iterates it;
``cancel()`` may be called from any thread and takes effect before the next token. How many
generations run at once is the caller's choice (the HTTP server bounds it with a worker pool).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from agent.engine.chat_template import ChatTemplate, TemplateError, variant_template
from agent.engine.detok import Detokenizer
from agent.engine.sampling import ParamError, SamplingParams
from agent.engine.stops import StopMatcher
from agent.engine.variant import RUNTIME_ORT, VariantInfo, check_variant

ROLE_MAX = 64  # characters; which roles render is the chat template's business


class EngineClosed(RuntimeError):
    """The engine was closed (its model unloaded) before this call."""


@dataclass(frozen=True)
class Piece:
    text: str
    token_id: int  # the token whose decoding completed this text


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


class Generation(Protocol):
    """One generation in a runtime: its own KV cache, one token per call."""

    def next_token(self) -> int: ...

    def is_done(self) -> bool: ...  # the runtime can't go on (its length limit)


class Runtime(Protocol):
    """What the engine needs of a loaded variant (genai_runtime.GenaiRuntime,
    ort_runtime.OrtRuntime). ``encode`` and ``decode`` are called under the
    engine's lock; ``start`` returns a callable that makes the generation in the thread that
    will run it, after ``params`` were checked and ``params.max_tokens`` resolved."""

    eos_token_ids: frozenset[int]

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def detokenizer(self) -> Detokenizer: ...

    def start(self, prompt_ids: Sequence[int], params: SamplingParams) -> Callable[[], Generation]: ...


class Stream(Iterator[Piece]):
    """One generation, pulled piece by piece. After the iteration ends, ``finish_reason`` is
    "stop" (end of answer or a stop sequence), "length" (max_tokens) or "cancelled"."""

    def __init__(self, start: Callable[[], Generation], new_detok: Callable[[], Detokenizer],
                 eos: frozenset[int], prompt_tokens: int, params: SamplingParams, max_tokens: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0
        self.token_ids: list[int] = []  # every generated token, the end-of-answer token included
        self.finish_reason: str | None = None
        self.max_tokens = max_tokens
        self._cancel = threading.Event()
        self._eos = eos
        self._matcher = StopMatcher(params.stop)
        self._start: Callable[[], Generation] | None = start
        self._new_detok: Callable[[], Detokenizer] | None = new_detok
        self._generation: Generation | None = None
        self._detok: Detokenizer | None = None

    def cancel(self) -> None:
        """Stop before the next token (thread-safe); the iteration then ends as "cancelled"."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._generation = self._detok = self._start = self._new_detok = None  # free the KV cache

    def __next__(self) -> Piece:
        while self.finish_reason is None:
            if self._cancel.is_set():
                self._finish("cancelled")
                break
            if self._generation is None or self._detok is None:
                assert self._start is not None and self._new_detok is not None  # until _finish
                self._generation = self._start()
                self._detok = self._new_detok()
            token = self._generation.next_token()
            self.token_ids.append(token)
            self.completion_tokens += 1
            at_end = token in self._eos
            text, hit = self._matcher.feed("" if at_end else self._detok.step(token))
            ended = at_end or self.completion_tokens >= self.max_tokens or self._generation.is_done()
            if not hit and ended:
                tail, hit = self._matcher.feed(self._detok.flush())  # a dangling partial character
                text += tail + ("" if hit else self._matcher.flush())
                self._finish("stop" if hit or at_end else "length")
            elif hit:
                self._finish("stop")
            if text:
                return Piece(text, token)
        raise StopIteration


class Engine:
    def __init__(self, info: VariantInfo, runtime: Runtime, template: ChatTemplate | None = None) -> None:
        self.info = info
        self._runtime: Runtime | None = runtime
        self._template = template
        self._lock = threading.Lock()  # the tokenizer's encode/decode
        self._eos = runtime.eos_token_ids

    @classmethod
    def load(cls, variant_dir: Path, *, threads: int | None = None) -> Engine:
        """Check and load a variant; raises VariantError naming the bad file. ``threads`` is
        onnxruntime's intra-op thread count (None: one per core this process may run on;
        onnxruntime-genai's own default is one thread, which leaves half of a 2-core device idle
        and decodes about 40 % slower there)."""
        info = check_variant(Path(variant_dir))
        template = variant_template(info)  # before the weights: a bad template fails the load fast
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        threads = threads or usable_cores()
        # Imported here: a device loads only the runtime its variant needs.
        if info.runtime == RUNTIME_ORT:
            from agent.engine.ort_runtime import OrtRuntime

            return cls(info, OrtRuntime.load(info, threads), template)
        from agent.engine.genai_runtime import GenaiRuntime

        return cls(info, GenaiRuntime.load(info, threads), template)

    def _live(self) -> Runtime:
        runtime = self._runtime
        if runtime is None:
            raise EngineClosed(f"the engine for {self.info.name} is closed")
        return runtime

    def encode(self, text: str) -> list[int]:
        runtime = self._live()
        with self._lock:
            return [int(t) for t in runtime.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens skipped (as transformers' skip_special_tokens)."""
        runtime = self._live()
        with self._lock:
            return runtime.decode(ids)

    def detokenizer(self) -> Detokenizer:
        """Incremental decoding as ``stream`` does it: ``step`` token ids one at a time, get the
        text each one completes (a character split over several tokens comes out whole, once);
        ``flush`` at the end."""
        return self._live().detokenizer()

    def chat_prompt(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for chat ``messages`` in the model's own chat template (the variant's
        chat_template.jinja or tokenizer_config.json), rendered as transformers renders it,
        ending with the assistant's turn. Content may be a string or OpenAI's list of
        {"type": "text", "text": ...} parts. Raises ParamError with the template's own message
        when it refuses the messages or would leave one out (a role it has no branch for)."""
        self._live()
        if self._template is None:
            raise ParamError("messages", f"model {self.info.name} has no chat template; send the "
                             "prompt text to /v1/completions instead")
        plain = [{"role": role, "content": text} for role, text in _check_messages(messages)]
        try:
            return self._template.render(plain, add_generation_prompt=add_generation_prompt)
        except TemplateError as e:
            source = self.info.chat_template_file or "tokenizer_config.json"
            raise ParamError(e.field, f"model {self.info.name}'s chat template ({source}): {e}") from e

    def stream(self, prompt: str, params: SamplingParams) -> Stream:
        """Start a generation (nothing runs until the first ``next``). Raises ParamError if the
        prompt or the parameters don't fit this model."""
        runtime = self._live()
        if not isinstance(prompt, str):
            raise ParamError("prompt", f"prompt must be a string, got {type(prompt).__name__}")
        with self._lock:
            ids = runtime.encode(prompt)
        if len(ids) == 0:
            raise ParamError("prompt", "the prompt is empty; send some text")
        params.validate(self.info.context_length, len(ids))
        max_tokens = params.max_tokens or self.info.context_length - len(ids)
        params = replace(params, max_tokens=max_tokens)
        return Stream(runtime.start(ids, params), runtime.detokenizer, self._eos, len(ids), params,
                      max_tokens)

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        stream = self.stream(prompt, params)
        text = "".join(piece.text for piece in stream)
        return Completion(text, stream.prompt_tokens, stream.completion_tokens,
                          stream.finish_reason or "stop")

    def close(self) -> None:
        """Unload: new calls raise EngineClosed; streams already started run to their end (they
        hold their own references) and the model is freed when the last one finishes."""
        self._runtime = None


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _check_messages(messages: Any) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ParamError(f"messages[{index}]", "each message must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role or len(role) > ROLE_MAX:
            raise ParamError(f"messages[{index}].role", f"role must be a non-empty string of at most "
                             f"{ROLE_MAX} characters (system, user, assistant, ...), got {role!r}")
        if isinstance(content, list):
            parts = [p.get("text") if isinstance(p, dict) and p.get("type") == "text" else None
                     for p in content]
            if any(not isinstance(p, str) for p in parts):
                raise ParamError(f"messages[{index}].content", "only text content parts are supported")
            content = "".join(parts)  # type: ignore[arg-type]  # checked: all str
        if not isinstance(content, str):
            raise ParamError(f"messages[{index}].content", "content must be a string or a list of text parts")
        out.append((role, content))
    return out
