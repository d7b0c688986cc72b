"""The agent's inference engine: one model variant in onnxruntime-genai, streaming generation.

Threading: one ``Engine`` serves any number of threads at once. Each ``stream`` call gets its
own ``og.Generator`` (its own KV cache) over the shared ``og.Model``; onnxruntime-genai runs
separate generators of one model from separate threads and releases the GIL while it computes.
The tokenizer is shared behind a lock (encoding is short). A ``Stream`` itself belongs to the
thread that iterates it; ``cancel()`` may be called from any thread and takes effect before
the next token. How many generations run at once is the caller's choice (the HTTP server
bounds it with a worker pool).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import onnxruntime_genai as og

from agent.engine.detok import ByteLevelDecoder, Detokenizer, GenaiStream
from agent.engine.sampling import ParamError, SamplingParams
from agent.engine.stops import StopMatcher
from agent.engine.variant import REBUILD, TOKENIZER, VariantError, VariantInfo, check_variant

ROLES = ("system", "user", "assistant")


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


class Stream(Iterator[Piece]):
    """One generation, pulled piece by piece. After the iteration ends, ``finish_reason`` is
    "stop" (end of answer or a stop sequence), "length" (max_tokens) or "cancelled"."""

    def __init__(self, model: Any, new_detok: Callable[[], Detokenizer], eos: frozenset[int],
                 prompt_ids: Any, params: SamplingParams, max_tokens: int) -> None:
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.token_ids: list[int] = []  # every generated token, the end-of-answer token included
        self.finish_reason: str | None = None
        self.max_tokens = max_tokens
        self._cancel = threading.Event()
        self._eos = eos
        self._matcher = StopMatcher(params.stop)
        self._new_detok = new_detok
        search: dict[str, Any] = {"max_length": self.prompt_tokens + max_tokens, "num_beams": 1,
                                  "min_length": self.prompt_tokens + params.min_tokens}
        if params.greedy:
            search.update(do_sample=False, top_k=1)
        else:
            search.update(do_sample=True, temperature=float(params.temperature),
                          top_p=float(params.top_p), top_k=params.top_k)
            if params.seed is not None:
                search["random_seed"] = params.seed
        og_params = og.GeneratorParams(model)
        og_params.set_search_options(**search)
        self._model, self._og_params, self._prompt_ids = model, og_params, prompt_ids
        self._generator: Any = None
        self._detok: Any = None

    def cancel(self) -> None:
        """Stop before the next token (thread-safe); the iteration then ends as "cancelled"."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def _finish(self, reason: str) -> None:
        self.finish_reason = reason
        self._generator = self._detok = self._og_params = self._model = None  # free the KV cache

    def __next__(self) -> Piece:
        while self.finish_reason is None:
            if self._cancel.is_set():
                self._finish("cancelled")
                break
            if self._generator is None:
                self._generator = og.Generator(self._model, self._og_params)
                self._generator.append_tokens(self._prompt_ids)
                self._detok = self._new_detok()
            self._generator.generate_next_token()
            token = int(self._generator.get_next_tokens()[0])
            self.token_ids.append(token)
            self.completion_tokens += 1
            at_end = token in self._eos
            text, hit = self._matcher.feed("" if at_end else self._detok.step(token))
            if not hit and (at_end or self.completion_tokens >= self.max_tokens or self._generator.is_done()):
                tail, hit = self._matcher.feed(self._detok.flush())  # a dangling partial character
                text += tail + ("" if hit else self._matcher.flush())
                self._finish("stop" if hit or at_end else "length")
            elif hit:
                self._finish("stop")
            if text:
                return Piece(text, token)
        raise StopIteration


class Engine:
    def __init__(self, info: VariantInfo, model: Any, tokenizer: Any,
                 decoder: ByteLevelDecoder | None = None) -> None:
        self.info = info
        self._model, self._tokenizer, self._decoder = model, tokenizer, decoder
        self._lock = threading.Lock()  # the tokenizer's encode/decode/template
        self._eos = frozenset(info.eos_token_ids) | frozenset(int(t) for t in tokenizer.eos_token_ids)

    @classmethod
    def load(cls, variant_dir: Path, *, threads: int | None = None) -> Engine:
        """Check and load a variant; raises VariantError naming the bad file. ``threads`` is
        onnxruntime's intra-op thread count per generation (None: onnxruntime's default)."""
        info = check_variant(Path(variant_dir))
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        config = og.Config(str(info.path))
        if threads is not None:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
        graph = next(name for name in info.files if name.endswith(".onnx"))
        try:
            model = og.Model(config)
        except RuntimeError as e:
            weights = f" or {graph}.data" if f"{graph}.data" in info.files else ""
            raise VariantError(f"{info.path / graph}{weights} failed to load ({e}); {REBUILD}") from e
        try:
            tokenizer = og.Tokenizer(model)
        except RuntimeError as e:
            raise VariantError(f"{info.path / TOKENIZER} failed to load ({e}); {REBUILD}") from e
        spec = json.loads((info.path / TOKENIZER).read_text(encoding="utf-8"))  # checked above
        return cls(info, model, tokenizer, ByteLevelDecoder.from_tokenizer_json(spec))

    def _live(self) -> tuple[Any, Any]:
        model, tokenizer = self._model, self._tokenizer
        if model is None:
            raise EngineClosed(f"the engine for {self.info.name} is closed")
        return model, tokenizer

    def encode(self, text: str) -> list[int]:
        _, tokenizer = self._live()
        with self._lock:
            return [int(t) for t in tokenizer.encode(text)]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens skipped (as transformers' skip_special_tokens)."""
        _, tokenizer = self._live()
        if self._decoder is not None:
            return self._decoder.decode(ids)
        with self._lock:
            return str(tokenizer.decode(list(ids)))

    def detokenizer(self) -> Detokenizer:
        """Incremental decoding as ``stream`` does it: ``step`` token ids one at a time, get the
        text each one completes (a character split over several tokens comes out whole, once);
        ``flush`` at the end."""
        _, tokenizer = self._live()
        return self._decoder.stream() if self._decoder is not None else GenaiStream(tokenizer)

    def chat_prompt(self, messages: list[dict]) -> str:
        """The prompt text for chat ``messages`` in the model's own chat template (rendered by
        onnxruntime-genai from the variant's chat_template.jinja), ending with the assistant's
        turn. Content may be a string or OpenAI's list of {"type": "text", "text": ...} parts."""
        _, tokenizer = self._live()
        if self.info.chat_template is None:
            raise ParamError("messages", f"model {self.info.name} has no chat template; send the "
                             "prompt text to /v1/completions instead")
        plain = [{"role": role, "content": text} for role, text in _check_messages(messages)]
        with self._lock:
            try:
                return tokenizer.apply_chat_template(json.dumps(plain), template_str=self.info.chat_template,
                                                     add_generation_prompt=True)
            except RuntimeError as e:
                raise ParamError("messages", f"the model's chat template failed on these messages: "
                                 f"{e}") from e

    def stream(self, prompt: str, params: SamplingParams) -> Stream:
        """Start a generation (nothing runs until the first ``next``). Raises ParamError if the
        prompt or the parameters don't fit this model."""
        model, tokenizer = self._live()
        if not isinstance(prompt, str):
            raise ParamError("prompt", f"prompt must be a string, got {type(prompt).__name__}")
        with self._lock:
            ids = tokenizer.encode(prompt)
        if len(ids) == 0:
            raise ParamError("prompt", "the prompt is empty; send some text")
        params.validate(self.info.context_length, len(ids))
        max_tokens = params.max_tokens or self.info.context_length - len(ids)
        return Stream(model, lambda: self._new_detok(tokenizer), self._eos, ids,
                      replace(params, max_tokens=max_tokens), max_tokens)

    def _new_detok(self, tokenizer: Any) -> Detokenizer:
        return self._decoder.stream() if self._decoder is not None else GenaiStream(tokenizer)

    def complete(self, prompt: str, params: SamplingParams) -> Completion:
        stream = self.stream(prompt, params)
        text = "".join(piece.text for piece in stream)
        return Completion(text, stream.prompt_tokens, stream.completion_tokens,
                          stream.finish_reason or "stop")

    def close(self) -> None:
        """Unload: new calls raise EngineClosed; streams already started run to their end (they
        hold their own references) and the model is freed when the last one finishes."""
        self._model = self._tokenizer = None


def _check_messages(messages: Any) -> list[tuple[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "messages must be a non-empty list of {role, content} objects")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ParamError(f"messages[{index}]", "each message must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise ParamError(f"messages[{index}].role",
                             f"role must be one of {', '.join(ROLES)}, got {role!r}")
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
