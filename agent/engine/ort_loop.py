"""A plain onnxruntime decode loop with a KV cache, for the variants of the fallback route
(optimum-onnx's ``text-generation-with-past`` decoder; ``"runtime": "onnxruntime"`` in
slmops-variant.json): tokens in, tokens out.

The prompt runs whole (prefill), then one token per step, each step's ``present.N.key/value``
outputs fed back as the next step's ``past_key_values.N.key/value`` inputs (kept as OrtValues,
never copied into numpy). ``input_ids``, and ``attention_mask`` / ``position_ids`` where the
graph has them, are all the loop feeds. The next token is the argmax (greedy) or sampled in
numpy: temperature, then top-k, then top-p, from a generator seeded per generation; the end
tokens are masked out until ``min_tokens`` tokens were generated.

Threading: one :class:`OrtLoop` (one InferenceSession) serves any number of threads;
``InferenceSession.run`` is thread-safe and releases the GIL. Each :class:`Decode` is one
generation with its own KV cache and random generator, driven by one thread at a time.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from agent.engine.sampling import SamplingParams
from agent.engine.variant import REBUILD, VariantError

PAST, PRESENT = "past_key_values.", "present."
_PAST_NAME = re.compile(r"past_key_values\.(\d+)\.(key|value)")
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
FED = ("input_ids", "attention_mask", "position_ids")


class OrtLoop:
    """An exported decoder with a KV cache in an InferenceSession, its inputs checked."""

    def __init__(self, graph: Path, *, threads: int | None = None) -> None:
        """Load ``graph``; raises VariantError naming it when it fails to load or is not a
        decoder with a KV cache this loop can feed."""
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            data = [graph.name + suffix for suffix in (".data", "_data")
                    if graph.with_name(graph.name + suffix).is_file()]
            weights = f" or {data[0]}" if data else ""
            raise VariantError(f"{graph}{weights} failed to load in onnxruntime ({e}); {REBUILD}") from e
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        self.input_names = set(inputs)

        def bad(what: str) -> VariantError:
            return VariantError(f"{graph}: {what}; the plain onnxruntime runtime runs optimum-onnx's "
                                "text-generation-with-past export (input_ids, past_key_values.N.key/value "
                                f"-> logits, present.N.key/value); {REBUILD}")

        if "input_ids" not in inputs or "logits" not in outputs:
            raise bad("the graph has no input_ids input or no logits output")
        unknown = sorted(n for n in inputs if n not in FED and not _PAST_NAME.fullmatch(n))
        if unknown:
            raise bad(f"the graph needs inputs this loop does not feed ({', '.join(unknown)})")
        self.past: list[tuple[str, str, int, int, Any]] = []  # (input, output, heads, head size, dtype)
        for name, meta in inputs.items():
            if not name.startswith(PAST):
                continue
            present = PRESENT + name[len(PAST):]
            shape = meta.shape
            if present not in outputs:
                raise bad(f"{name} has no matching {present} output")
            if len(shape) != 4 or not all(isinstance(d, int) and d > 0 for d in (shape[1], shape[3])):
                raise bad(f"{name} has shape {shape}, expected [batch, heads, past, head size] with "
                          "fixed heads and head size")
            if meta.type not in _DTYPES:
                raise bad(f"{name} is {meta.type}; only float and float16 caches are supported")
            self.past.append((name, present, shape[1], shape[3], _DTYPES[meta.type]))
        if not self.past:
            raise bad("the graph has no past_key_values inputs (it was exported without a KV cache)")
        self.output_names = ["logits", *(present for _n, present, _h, _d, _t in self.past)]

    def empty_past(self) -> dict[str, Any]:
        return {name: ort.OrtValue.ortvalue_from_numpy(np.zeros((1, heads, 0, size), dtype=dtype))
                for name, _present, heads, size, dtype in self.past}

    def step(self, ids: Sequence[int], past_length: int,
             past: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        """Run ``ids`` after ``past_length`` cached tokens: (the next token's logits, the new cache)."""
        feed = dict(past)
        feed["input_ids"] = ort.OrtValue.ortvalue_from_numpy(np.array([ids], dtype=np.int64))
        total = past_length + len(ids)
        if "attention_mask" in self.input_names:
            feed["attention_mask"] = ort.OrtValue.ortvalue_from_numpy(np.ones((1, total), dtype=np.int64))
        if "position_ids" in self.input_names:
            positions = np.arange(past_length, total, dtype=np.int64)[None, :]
            feed["position_ids"] = ort.OrtValue.ortvalue_from_numpy(positions)
        outputs = self.session.run_with_ort_values(self.output_names, feed)
        logits = outputs[0].numpy()[0, -1]
        return logits, {name: value for (name, *_), value in zip(self.past, outputs[1:], strict=True)}

    def decode(self, prompt_ids: Sequence[int], params: SamplingParams, eos: frozenset[int]) -> Decode:
        """A generation of at most ``params.max_tokens`` tokens after ``prompt_ids`` (nothing runs
        until the first ``next_token``)."""
        return Decode(self, prompt_ids, params, eos)


class Decode:
    """One generation: ``next_token`` runs the model once and picks the next token."""

    def __init__(self, loop: OrtLoop, prompt_ids: Sequence[int], params: SamplingParams,
                 eos: frozenset[int]) -> None:
        self._loop = loop
        self._pending = [int(t) for t in prompt_ids]
        self._cached = 0  # tokens in the KV cache
        self._past: dict[str, Any] | None = None
        self._max_length = len(self._pending) + int(params.max_tokens or 0)
        self._sampler = Sampler(params, eos)
        self._generated = 0
        self._done = False

    def next_token(self) -> int:
        if self._done:
            raise RuntimeError("the generation is done")
        if self._past is None:
            self._past = self._loop.empty_past()
        logits, self._past = self._loop.step(self._pending, self._cached, self._past)
        self._cached += len(self._pending)
        token = self._sampler.pick(logits, self._generated)
        self._generated += 1
        self._pending = [token]
        self._done = token in self._sampler.eos or self._cached + 1 >= self._max_length
        return token

    def is_done(self) -> bool:
        return self._done


class Sampler:
    """The next token from one step's logits, as ``params`` ask."""

    def __init__(self, params: SamplingParams, eos: frozenset[int]) -> None:
        self.eos = eos
        self._params = params
        self._suppress = np.array(sorted(eos), dtype=np.int64)
        self._rng = None if params.greedy else np.random.default_rng(params.seed)

    def pick(self, logits: np.ndarray, generated: int) -> int:
        scores = np.asarray(logits, dtype=np.float64)
        if generated < self._params.min_tokens and len(self._suppress):
            scores = scores.copy()
            scores[self._suppress[self._suppress < len(scores)]] = -np.inf
        if self._rng is None:
            return int(np.argmax(scores))
        scores = scores / float(self._params.temperature)
        top_k = self._params.top_k
        candidates = (np.argpartition(-scores, top_k - 1)[:top_k] if 0 < top_k < len(scores)
                      else np.arange(len(scores)))
        order = candidates[np.argsort(-scores[candidates], kind="stable")]  # most likely first
        probs = np.exp(scores[order] - scores[order[0]])
        probs /= probs.sum()
        if self._params.top_p < 1.0:  # the fewest most likely tokens that reach top_p
            keep = int(np.searchsorted(np.cumsum(probs), self._params.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        cdf = np.cumsum(probs)
        at = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(order[min(at, len(order) - 1)])
