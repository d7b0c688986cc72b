"""Token ids back to text, incrementally, as Hugging Face's tokenizers do it.

onnxruntime-genai 0.12.2 decodes a byte-level BPE differently from the tokenizers library
whenever a sampled sequence holds bytes that are not valid UTF-8 (rare, but high temperatures
do it): ``Tokenizer.decode`` stops at the first bad byte, and ``TokenizerStream`` swallows the
character after it. For byte-level BPE tokenizers (the GPT-2 family, and every model slmops
trains) this module decodes the way the tokenizers library and training do: each token is its
bytes, joined and read as UTF-8 with U+FFFD for bad bytes, nothing lost. Other tokenizers fall
back to onnxruntime-genai's stream (or, for plain onnxruntime variants, the tokenizers library's).
"""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from functools import cache
from typing import Any, Protocol

from tokenizers.decoders import DecodeStream


class Detokenizer(Protocol):
    def step(self, token: int) -> str: ...

    def flush(self) -> str: ...


@cache
def _unicode_to_byte() -> dict[str, int]:
    """The inverse of GPT-2's bytes_to_unicode: the printable stand-in for each byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {chr(b): b for b in printable}, 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + extra)] = b
            extra += 1
    return table


class ByteLevelDecoder:
    """Decodes the ids of a byte-level BPE tokenizer (from its tokenizer.json), skipping
    special tokens."""

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    @classmethod
    def from_tokenizer_json(cls, spec: Any) -> ByteLevelDecoder | None:
        """A decoder for the parsed tokenizer.json ``spec``, or None if it is not byte-level."""
        if not isinstance(spec, dict) or not isinstance(spec.get("decoder"), dict):
            return None
        vocab = (spec.get("model") or {}).get("vocab")
        if spec["decoder"].get("type") != "ByteLevel" or not isinstance(vocab, dict):
            return None
        table = _unicode_to_byte()
        by_id: dict[int, bytes] = {}
        for token, index in vocab.items():
            if not all(ch in table for ch in token):
                return None
            by_id[index] = bytes(table[ch] for ch in token)
        for added in spec.get("added_tokens") or []:
            by_id[added["id"]] = b"" if added.get("special") else added["content"].encode()
        pieces = [b""] * (max(by_id, default=-1) + 1)
        for index, data in by_id.items():
            pieces[index] = data
        return cls(pieces)

    def _bytes(self, token: int) -> bytes:
        return self._pieces[token] if 0 <= token < len(self._pieces) else b""

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self._bytes(i) for i in ids).decode("utf-8", errors="replace")

    def stream(self) -> Detokenizer:
        return _ByteStream(self)


class _ByteStream:
    def __init__(self, decoder: ByteLevelDecoder) -> None:
        self._decoder = decoder
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def step(self, token: int) -> str:
        return self._utf8.decode(self._decoder._bytes(token))

    def flush(self) -> str:
        return self._utf8.decode(b"", final=True)


class GenaiStream:
    """onnxruntime-genai's own incremental decoder, for tokenizers that are not byte-level."""

    def __init__(self, tokenizer: Any) -> None:
        self._stream = tokenizer.create_stream()

    def step(self, token: int) -> str:
        return str(self._stream.decode(token))

    def flush(self) -> str:
        return ""


class TokenizersStream:
    """The tokenizers library's own incremental decoder (plain onnxruntime variants whose
    tokenizer is not byte-level), special tokens skipped."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=True)

    def step(self, token: int) -> str:
        return self._stream.step(self._tokenizer, token) or ""

    def flush(self) -> str:
        return ""
