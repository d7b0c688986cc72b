"""A fallback variant (``"runtime": "onnxruntime"``) behind the engine's runtime interface
(engine.Runtime): ort_loop.py's decode loop and the ``tokenizers`` library on tokenizer.json (the
engine renders the chat template, chat_template.py, for both runtimes).

Prompts are encoded without special tokens, as transformers' ``apply_chat_template`` and the
controller's evaluation encode them: a template that wants a BOS writes ``{{ bos_token }}``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

from tokenizers import Tokenizer

from agent.engine.detok import ByteLevelDecoder, Detokenizer, TokenizersStream
from agent.engine.ort_loop import Decode, OrtLoop
from agent.engine.sampling import SamplingParams
from agent.engine.variant import REBUILD, TOKENIZER, VariantError, VariantInfo


class OrtRuntime:
    def __init__(self, info: VariantInfo, loop: OrtLoop, tokenizer: Tokenizer,
                 decoder: ByteLevelDecoder | None) -> None:
        self.info = info
        self.eos_token_ids = frozenset(info.eos_token_ids)
        self._loop, self._tokenizer, self._decoder = loop, tokenizer, decoder

    @classmethod
    def load(cls, info: VariantInfo, threads: int | None) -> OrtRuntime:
        loop = OrtLoop(info.path / info.graph, threads=threads)
        path = info.path / TOKENIZER
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise VariantError(f"{path} failed to load in the tokenizers library ({e}); {REBUILD}") from e
        spec = json.loads(path.read_text(encoding="utf-8"))  # checked by check_variant
        decoder = ByteLevelDecoder.from_tokenizer_json(spec)
        return cls(info, loop, tokenizer, decoder)

    def encode(self, text: str) -> Sequence[int]:
        ids: list[int] = self._tokenizer.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        if self._decoder is not None:
            return self._decoder.decode(ids)
        text: str = self._tokenizer.decode(list(ids), skip_special_tokens=True)
        return text

    def detokenizer(self) -> Detokenizer:
        return self._decoder.stream() if self._decoder is not None else TokenizersStream(self._tokenizer)

    def start(self, prompt_ids: Sequence[int], params: SamplingParams) -> Callable[[], Decode]:
        """The generation, made by the returned callable in the thread that generates."""
        return functools.partial(self._loop.decode, list(prompt_ids), params, self.eos_token_ids)
