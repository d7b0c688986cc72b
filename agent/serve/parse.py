"""Read OpenAI request bodies into what the engine takes, refusing what it can't honour.

Defaults differ from OpenAI's in one place: an omitted ``temperature`` means greedy decoding
(0), because the task models slmops builds are meant to answer deterministically; pass a
temperature to sample. An omitted ``max_tokens`` means "up to the end of the context".
Unsupported options that change the answer (n > 1, penalties, logprobs, tools) are refused
with a 400 naming them rather than silently ignored; harmless ones (user, metadata) pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agent.engine.sampling import ParamError, SamplingParams


@dataclass(frozen=True)
class GenerationRequest:
    model: str
    params: SamplingParams
    stream: bool
    include_usage: bool
    messages: list[Any] | None = None  # chat: as sent; the engine checks each message
    prompt: str | None = None  # completions


def _optional(body: dict[str, Any], key: str, default: Any) -> Any:
    value = body.get(key)
    return default if value is None else value


def _refuse_unsupported(body: dict[str, Any]) -> None:
    n = body.get("n")
    if n not in (None, 1):
        raise ParamError("n", f"only n = 1 is supported, got {n!r}")
    for key in ("presence_penalty", "frequency_penalty"):
        if body.get(key) not in (None, 0, 0.0):
            raise ParamError(key, f"{key} is not supported; leave it out or set it to 0")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") not in (None, 0):
        raise ParamError("logprobs", "logprobs are not supported")
    for key in ("tools", "functions"):
        if body.get(key):
            raise ParamError(key, f"{key} are not supported by this model's chat template")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ParamError("response_format", "only the text response format is supported")
    if body.get("best_of") not in (None, 1):
        raise ParamError("best_of", "only best_of = 1 is supported")
    if body.get("echo") not in (None, False):
        raise ParamError("echo", "echo is not supported")
    if body.get("suffix") not in (None, ""):
        raise ParamError("suffix", "suffix is not supported")


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(value)
    raise ParamError("stop", f"stop must be a string or a list of strings, got {type(value).__name__}")


def _common(body: dict[str, Any], max_tokens_key: str) -> tuple[str, SamplingParams, bool, bool]:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ParamError("model", "model is required: the id of a model from /v1/models")
    _refuse_unsupported(body)
    stream = _optional(body, "stream", False)
    if not isinstance(stream, bool):
        raise ParamError("stream", f"stream must be true or false, got {stream!r}")
    options = _optional(body, "stream_options", {})
    if not isinstance(options, dict):
        raise ParamError("stream_options", "stream_options must be an object")
    include_usage = bool(options.get("include_usage", False))
    max_tokens = body.get(max_tokens_key, body.get("max_tokens"))
    params = SamplingParams(max_tokens=max_tokens, temperature=_optional(body, "temperature", 0.0),
                            top_p=_optional(body, "top_p", 1.0), top_k=_optional(body, "top_k", 0),
                            stop=_stop(body.get("stop")), seed=body.get("seed"),
                            min_tokens=_optional(body, "min_tokens", 0))
    params.validate(context_length=None)  # types and ranges; the engine checks the model's context
    return model, params, stream, include_usage


def parse_chat(body: dict[str, Any]) -> GenerationRequest:
    model, params, stream, include_usage = _common(body, "max_completion_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ParamError("messages", "messages must be a non-empty list of {role, content} objects")
    return GenerationRequest(model, params, stream, include_usage, messages=messages)


def parse_completion(body: dict[str, Any]) -> GenerationRequest:
    model, params, stream, include_usage = _common(body, "max_tokens")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise ParamError("prompt", "prompt must be a string (one prompt per request)")
    return GenerationRequest(model, params, stream, include_usage, prompt=prompt)
