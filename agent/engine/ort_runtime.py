"""A fallback variant (``"runtime": "onnxruntime"``) behind the engine's runtime interface
(engine.Runtime): ort_loop.py's decode loop, the ``tokenizers`` library on tokenizer.json, and
the chat template rendered by chat_template.py (onnxruntime-genai's renderer exists only beside
a loaded og.Model, and the agent has no Jinja).

Prompts are encoded without special tokens, as transformers' ``apply_chat_template`` and the
controller's evaluation encode them: a template that wants a BOS writes ``{{ bos_token }}``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Sequence

from tokenizers import Tokenizer

from agent.engine.chat_template import ChatTemplate, TemplateError
from agent.engine.detok import ByteLevelDecoder, Detokenizer, TokenizersStream
from agent.engine.ort_loop import Decode, OrtLoop
from agent.engine.sampling import ParamError, SamplingParams
from agent.engine.variant import REBUILD, TOKENIZER, TOKENIZER_CONFIG, VariantError, VariantInfo, token_text


class OrtRuntime:
    def __init__(self, info: VariantInfo, loop: OrtLoop, tokenizer: Tokenizer,
                 decoder: ByteLevelDecoder | None, template: ChatTemplate | None, template_error: str,
                 specials: dict[str, str]) -> None:
        self.info = info
        self.eos_token_ids = frozenset(info.eos_token_ids)
        self._loop, self._tokenizer, self._decoder = loop, tokenizer, decoder
        self._template, self._template_error, self._specials = template, template_error, specials

    @classmethod
    def load(cls, info: VariantInfo, threads: int | None) -> OrtRuntime:
        loop = OrtLoop(info.path / info.graph, threads=threads)
        path = info.path / TOKENIZER
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises plain Exception on a bad file
            raise VariantError(f"{path} failed to load in the tokenizers library ({e}); {REBUILD}") from e
        spec = json.loads(path.read_text(encoding="utf-8"))  # checked by check_variant
        template, error = None, ""
        if info.chat_template is not None:
            try:
                template = ChatTemplate(info.chat_template)
            except TemplateError as e:
                error = str(e)
        config = info.path / TOKENIZER_CONFIG
        settings = json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}  # checked
        specials = {key: token_text(settings.get(key)) for key in ("bos_token", "eos_token")}
        decoder = ByteLevelDecoder.from_tokenizer_json(spec)
        return cls(info, loop, tokenizer, decoder, template, error, specials)

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

    def chat_prompt(self, messages: list[dict[str, str]]) -> str:
        if self._template is None:
            source = self.info.path / (self.info.chat_template_file or TOKENIZER_CONFIG)
            raise ParamError("messages", f"model {self.info.name}'s chat template (in {source}) is not "
                             f"one the plain onnxruntime runtime can render: {self._template_error}. It "
                             "renders templates that loop over the messages with if/elif on the role and "
                             "join strings, message['role'], message['content'], bos_token and eos_token; "
                             "send the prompt text to /v1/completions instead, or give the model such a "
                             "template")
        return self._template.render(messages, add_generation_prompt=True, **self._specials)

    def start(self, prompt_ids: Sequence[int], params: SamplingParams) -> Callable[[], Decode]:
        """The generation, made by the returned callable in the thread that generates."""
        return functools.partial(self._loop.decode, list(prompt_ids), params, self.eos_token_ids)
