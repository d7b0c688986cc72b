"""A plain onnxruntime greedy decode loop with a KV cache, for the variants of the fallback route
(optimum-onnx's ``text-generation-with-past`` decoder; ``"runtime": "onnxruntime"``). It is what
checks such a variant on the controller, with the device's light stack only (onnxruntime,
tokenizers, numpy, jinja2 for the chat template): no torch, no transformers.

One prompt at a time: the prompt is run whole (prefill), then one token per step with the
``present.N.*`` outputs fed back as ``past_key_values.N.*``. Generation stops at an end token
of ``generation_config.json`` / ``config.json`` or after ``max_new_tokens``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(bfloat16)": "float32"}


class DecodeError(RuntimeError):
    """A variant this loop can't run; the message names the file."""


@dataclass(frozen=True)
class Generated:
    ids: list[int]  # the new tokens, the end token included when generation stopped on it
    text: str  # the tokens before the end token, decoded without special tokens
    finish_reason: str  # "stop" | "length"
    first_token_s: float
    total_s: float


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DecodeError(f"{path}: not JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _ids(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]
    return []


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return value if isinstance(value, str) else ""


class OrtDecoder:
    def __init__(self, variant_dir: Path, *, threads: int | None = None) -> None:
        import numpy as np
        import onnxruntime as ort
        from tokenizers import Tokenizer

        root = Path(variant_dir)
        graph = root / MODEL_FILE
        if not graph.is_file():
            raise DecodeError(f"{graph} is missing; rebuild the variant (slmops build)")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise DecodeError(f"{graph} failed to load in onnxruntime: {e}") from e
        tokenizer_path = root / "tokenizer.json"
        if not tokenizer_path.is_file():
            raise DecodeError(f"{tokenizer_path} is missing; rebuild the variant (slmops build)")
        self.tokenizer = Tokenizer.from_file(str(tokenizer_path))
        self.np = np
        config, generation = _json(root / "config.json"), _json(root / "generation_config.json")
        self.tokenizer_config = _json(root / "tokenizer_config.json")
        self.eos = set(_ids(generation.get("eos_token_id")) or _ids(config.get("eos_token_id")))
        eos_text = _token_text(self.tokenizer_config.get("eos_token"))
        if eos_text and (eos_id := self.tokenizer.token_to_id(eos_text)) is not None:
            self.eos.add(eos_id)
        if not self.eos:
            raise DecodeError(f"{root}: neither generation_config.json nor config.json names an "
                              "eos_token_id; generation could not stop")
        self.template = self._chat_template(root)
        inputs = {i.name: i for i in self.session.get_inputs()}
        self.input_names = set(inputs)
        self.past: list[tuple[str, str, tuple[int, ...], str]] = []  # (input, output, shape, dtype)
        for name, meta in inputs.items():
            if name.startswith("past_key_values."):
                shape = tuple(d if isinstance(d, int) else 0 for d in meta.shape)
                if len(shape) != 4 or not shape[1] or not shape[3]:
                    raise DecodeError(f"{graph}: {name} has shape {meta.shape}; expected [batch, heads, "
                                      "past, head_size] with fixed heads and head size")
                self.past.append((name, name.replace("past_key_values", "present"), shape,
                                  _DTYPES.get(meta.type, "float32")))
        self.output_names = ["logits", *(out for _in, out, _s, _d in self.past)]

    @staticmethod
    def _chat_template(root: Path) -> str | None:
        template = root / "chat_template.jinja"
        if template.is_file():
            return template.read_text(encoding="utf-8")
        value = _json(root / "tokenizer_config.json").get("chat_template")
        return value if isinstance(value, str) else None

    def chat_prompt(self, prompt: str) -> str:
        """The user turn in the model's chat template, ending with the assistant's turn."""
        if self.template is None:
            from controller.pipeline import chat

            return chat.prompt_text(prompt)
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.template).render(
            messages=[{"role": "user", "content": prompt}], add_generation_prompt=True,
            bos_token=_token_text(self.tokenizer_config.get("bos_token")),
            eos_token=_token_text(self.tokenizer_config.get("eos_token")))

    def generate(self, prompt_text: str, max_new_tokens: int) -> Generated:
        np = self.np
        ids = self.tokenizer.encode(prompt_text, add_special_tokens=False).ids
        if not ids:
            raise DecodeError("the prompt encodes to no tokens")
        feed: dict[str, Any] = {name: np.zeros((1, shape[1], 0, shape[3]), dtype=dtype)
                                for name, _out, shape, dtype in self.past}
        step_ids, past_len, new = list(ids), 0, []
        started = time.perf_counter()
        first = 0.0
        reason = "length"
        while len(new) < max_new_tokens:
            feed["input_ids"] = np.array([step_ids], dtype=np.int64)
            if "attention_mask" in self.input_names:
                feed["attention_mask"] = np.ones((1, past_len + len(step_ids)), dtype=np.int64)
            if "position_ids" in self.input_names:
                feed["position_ids"] = np.arange(past_len, past_len + len(step_ids), dtype=np.int64)[None, :]
            outputs = self.session.run(self.output_names, feed)
            token = int(np.argmax(outputs[0][0, -1]))
            if not new:
                first = time.perf_counter() - started
            new.append(token)
            past_len += len(step_ids)
            step_ids = [token]
            for (name, _out, _shape, _dtype), value in zip(self.past, outputs[1:], strict=True):
                feed[name] = value
            if token in self.eos:
                reason = "stop"
                break
        total = time.perf_counter() - started
        kept = new[:-1] if reason == "stop" else new
        text = self.tokenizer.decode(kept, skip_special_tokens=True)
        return Generated(new, text, reason, first, total)
