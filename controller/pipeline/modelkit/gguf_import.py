"""A GGUF file as a Hugging Face model directory: dequantized weights as safetensors, and the
tokenizer the file actually describes.

transformers dequantizes GGUF weights (``from_pretrained(dir, gguf_file=...)``), but the
tokenizer it builds from a GGUF whose ``tokenizer.ggml.model`` is ``gpt2`` is labelled a Llama /
SentencePiece tokenizer (byte fallback, an SPM decoder, a template that prepends the BOS) and it
takes the end-of-sequence token from the wrong field: onnxruntime-genai then encodes spaces and
newlines as -1 and generation never stops. So the tokenizer is written here from the GGUF's own
fields (vocabulary, merges, token types, special ids, pre-tokenizer name, chat template) with the
``tokenizers`` library; no library converts a GGUF byte-level BPE tokenizer faithfully.

What the file was is kept in ``SOURCE_FILE`` beside the weights: its sha256, quantization
types, architecture and the metadata a user would ask about.
"""

from __future__ import annotations

import collections
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import ModelError, file_sha256, replace_dir, temp_dir_beside

SOURCE_FILE = "slmops-source.json"
# GGUF token types (gguf.TokenType): 3 = control, 4 = user defined; both are special tokens.
_SPECIAL_TYPES = (3, 4)
# Texts the imported tokenizer must encode to the same ids as transformers' slow path on the
# written files, and decode back exactly: spaces, newlines, digits and non-ASCII.
CHECK_TEXTS = ("Hello world!\n  two  spaces\tand a tab", "Order #12345 costs $67.89.",
               "naïve café — 東京 🚀", "<|im_start|>user\nHi<|im_end|>\n")


@dataclass(frozen=True)
class GgufInfo:
    path: Path
    sha256: str
    architecture: str
    name: str
    quantization: dict[str, int]  # tensor type -> tensors of that type
    context_length: int
    vocab_size: int
    tokenizer_model: str
    pre_tokenizer: str

    def to_json(self) -> dict[str, Any]:
        return {"format": "gguf", "file": self.path.name, "sha256": self.sha256,
                "architecture": self.architecture, "name": self.name,
                "quantization": self.quantization, "context_length": self.context_length,
                "vocab_size": self.vocab_size, "tokenizer_model": self.tokenizer_model,
                "pre_tokenizer": self.pre_tokenizer}


def _reader(path: Path) -> Any:
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError) as e:
        raise ModelError(f"{path}: not a GGUF file this version of gguf can read ({e})") from e


def _field(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def read_info(path: Path) -> GgufInfo:
    reader = _reader(path)
    arch = str(_field(reader, "general.architecture", ""))
    if not arch:
        raise ModelError(f"{path}: the GGUF names no general.architecture")
    tokens = _field(reader, "tokenizer.ggml.tokens") or []
    return GgufInfo(
        path=path, sha256=file_sha256(path), architecture=arch,
        name=str(_field(reader, "general.name", path.stem)),
        quantization=dict(collections.Counter(t.tensor_type.name for t in reader.tensors)),
        context_length=int(_field(reader, f"{arch}.context_length", 0) or 0),
        vocab_size=len(tokens), tokenizer_model=str(_field(reader, "tokenizer.ggml.model", "")),
        pre_tokenizer=str(_field(reader, "tokenizer.ggml.pre", "")))


def check_architecture(info: GgufInfo, where: str) -> None:
    """ModelError (one line) unless transformers can dequantize a GGUF of this architecture."""
    import transformers
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    known = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
    if info.architecture not in known:
        raise ModelError(f"{where}: transformers {transformers.__version__} can't dequantize a GGUF of "
                         f"architecture {info.architecture!r} (it reads {', '.join(known)}); import "
                         "the model's Hugging Face directory (or hf:ORG/NAME) instead")


def _pre_tokenizer(pre: str) -> Any:
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":  # llama.cpp's SMOLLM: every digit alone, then GPT-2's split
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def write_tokenizer(reader: Any, out: Path) -> dict[str, Any]:
    """tokenizer.json and tokenizer_config.json for a byte-level BPE GGUF; returns the special
    token ids written (bos, eos, pad, unk) for the model's config."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    kind = str(_field(reader, "tokenizer.ggml.model", ""))
    if kind != "gpt2":
        raise ModelError(f"the GGUF's tokenizer is {kind!r}; only byte-level BPE ('gpt2') "
                         "tokenizers are imported from GGUF so far: import the model's Hugging "
                         "Face directory instead")
    tokens: list[str] = list(_field(reader, "tokenizer.ggml.tokens"))
    types: list[int] = list(_field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges") or []]
    vocab = {t: i for i, t in enumerate(tokens)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(str(_field(reader, "tokenizer.ggml.pre", "")))
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind in zip(tokens, types, strict=True) if kind in _SPECIAL_TYPES])

    def special(key: str) -> int | None:
        value = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return int(value) if value is not None and 0 <= int(value) < len(tokens) else None

    ids = {"bos": special("bos"), "eos": special("eos"), "pad": special("padding"),
           "unk": special("unknown")}
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": bool(_field(reader, "tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(_field(reader, "tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": int(_field(reader, f"{_field(reader, 'general.architecture')}.context_length",
                                       0) or 2048),
    }
    for name, value in ids.items():
        if value is not None:
            config[f"{name}_token"] = tokens[value]
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = str(template)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    return ids


def check_tokenizer(out: Path) -> None:
    """The written tokenizer through transformers and through ``tokenizers`` alone (what the
    agent's runtime reads) gives the same ids, and decodes each text back exactly."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    fast = AutoTokenizer.from_pretrained(out)
    raw = Tokenizer.from_file(str(out / "tokenizer.json"))
    for text in CHECK_TEXTS:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        if raw.encode(text, add_special_tokens=False).ids != ids:
            raise ModelError(f"the imported tokenizer encodes {text!r} differently through "
                             "transformers and through tokenizers; the import is not usable")
        if -1 in ids or fast.decode(ids) != text:
            raise ModelError(f"the imported tokenizer does not round-trip {text!r} "
                             f"(ids {ids[:12]}...); the GGUF's tokenizer is not supported")


def import_gguf(path: Path, out: Path) -> GgufInfo:
    """Write the HF directory for ``path`` into ``out`` (which must not exist): config.json,
    model.safetensors (fp32), generation_config.json, the tokenizer and SOURCE_FILE."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such GGUF file")
    info = read_info(path)
    tmp = temp_dir_beside(out)
    try:
        ids = write_tokenizer(_reader(path), tmp)
        try:
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise ModelError(f"{path}: transformers cannot dequantize this GGUF "
                             f"({info.architecture}, {', '.join(info.quantization)}): {e}") from e
        for name in ("bos", "eos", "pad"):
            if ids[name] is not None:
                setattr(model.config, f"{name}_token_id", ids[name])
                setattr(model.generation_config, f"{name}_token_id", ids[name])
        model.save_pretrained(tmp, safe_serialization=True)
        check_tokenizer(tmp)
        (tmp / SOURCE_FILE).write_text(json.dumps(info.to_json(), indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info
