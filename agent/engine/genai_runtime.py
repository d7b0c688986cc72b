"""An onnxruntime-genai variant behind the engine's runtime interface (engine.Runtime): the
og.Model and og.Tokenizer (the engine renders the chat template, chat_template.py), and one
og.Generator (its own KV cache) per generation.

Threading: onnxruntime-genai runs separate generators of one model from separate threads and
releases the GIL while it computes; the tokenizer is called under the engine's lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import onnxruntime_genai as og

from agent.engine.detok import ByteLevelDecoder, Detokenizer, GenaiStream
from agent.engine.sampling import SamplingParams
from agent.engine.variant import REBUILD, TOKENIZER, VariantError, VariantInfo

ADAPTER_NAME = "variant"  # the one adapter a variant may carry, as og.Adapters knows it


class _Generation:
    def __init__(self, model: Any, og_params: Any, prompt_ids: Any, adapters: Any = None) -> None:
        self._generator = og.Generator(model, og_params)
        if adapters is not None:
            self._generator.set_active_adapter(adapters, ADAPTER_NAME)
        self._generator.append_tokens(prompt_ids)

    def next_token(self) -> int:
        self._generator.generate_next_token()
        return int(self._generator.get_next_tokens()[0])

    def is_done(self) -> bool:
        return bool(self._generator.is_done())


class GenaiRuntime:
    def __init__(self, info: VariantInfo, model: Any, tokenizer: Any,
                 decoder: ByteLevelDecoder | None, adapters: Any = None) -> None:
        self.info = info
        self._model, self._tokenizer, self._decoder = model, tokenizer, decoder
        self._adapters = adapters  # og.Adapters with the variant's LoRA adapter, if it has one
        self.eos_token_ids = frozenset(info.eos_token_ids) | frozenset(
            int(t) for t in tokenizer.eos_token_ids)

    @classmethod
    def load(cls, info: VariantInfo, threads: int) -> GenaiRuntime:
        config = og.Config(str(info.path))
        # Threads wait for the next op spinning (onnxruntime's default): with two threads on two
        # cores, sleeping between ops instead halves decode speed.
        options: dict[str, Any] = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        graph = info.graph
        try:
            model = og.Model(config)
        except RuntimeError as e:
            weights = f" or {graph}.data" if f"{graph}.data" in info.files else ""
            raise VariantError(f"{info.path / graph}{weights} failed to load ({e}); {REBUILD}") from e
        try:
            tokenizer = og.Tokenizer(model)
        except RuntimeError as e:
            raise VariantError(f"{info.path / TOKENIZER} failed to load ({e}); {REBUILD}") from e
        adapters = None
        if info.adapter is not None:
            try:
                adapters = og.Adapters(model)
                adapters.load(str(info.path / info.adapter), ADAPTER_NAME)
            except RuntimeError as e:
                raise VariantError(f"{info.path / info.adapter} failed to load as a LoRA adapter of "
                                   f"{info.path / graph} ({e}); {REBUILD}") from e
        spec = json.loads((info.path / TOKENIZER).read_text(encoding="utf-8"))  # checked by check_variant
        return cls(info, model, tokenizer, ByteLevelDecoder.from_tokenizer_json(spec), adapters)

    def encode(self, text: str) -> Sequence[int]:
        # A numpy array, as og.Generator.append_tokens takes it.
        ids: Sequence[int] = self._tokenizer.encode(text)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        if self._decoder is not None:
            return self._decoder.decode(ids)
        return str(self._tokenizer.decode(list(ids)))

    def detokenizer(self) -> Detokenizer:
        return self._decoder.stream() if self._decoder is not None else GenaiStream(self._tokenizer)

    def start(self, prompt_ids: Sequence[int], params: SamplingParams) -> Callable[[], _Generation]:
        """The search options of one generation, set now; the generator itself is made by the
        returned callable, in the thread that generates."""
        prompt_tokens = len(prompt_ids)
        search: dict[str, Any] = {"max_length": prompt_tokens + int(params.max_tokens or 0), "num_beams": 1,
                                  "min_length": prompt_tokens + params.min_tokens}
        if params.greedy:
            search.update(do_sample=False, top_k=1)
        else:
            search.update(do_sample=True, temperature=float(params.temperature),
                          top_p=float(params.top_p), top_k=params.top_k)
            if params.seed is not None:
                search["random_seed"] = params.seed
        og_params = og.GeneratorParams(self._model)
        og_params.set_search_options(**search)
        model, adapters = self._model, self._adapters
        return lambda: _Generation(model, og_params, prompt_ids, adapters)
