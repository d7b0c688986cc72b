"""Check a model variant directory (onnxruntime-genai layout) before anything loads it.

A variant is ``genai_config.json``, the decoder ``model.onnx`` (its weights in
``model.onnx.data`` when the graph stores them outside), ``tokenizer.json`` and, optionally,
``tokenizer_config.json`` / ``chat_template.jinja``. :func:`check_variant` reads only the small
files and the graph (a few kB; the weights file is only stat'ed), so it is cheap, and every
failure names the file and what to do. Loading the weights is the engine's job; it reports
its failures as :class:`VariantError` too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG, TOKENIZER, TOKENIZER_CONFIG, TEMPLATE = (
    "genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
REBUILD = "rebuild the variant (slmops build) or download it again"


class VariantError(ValueError):
    """A variant directory that can't be served; the message names the file and what to do."""


@dataclass(frozen=True)
class VariantInfo:
    name: str  # the directory's name
    path: Path
    files: dict[str, int] = field(repr=False)  # file name -> size in bytes
    precision: str  # int4 | int8 | fp16 | fp32 | bf16 (read from the graph)
    context_length: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    chat_template: str | None = field(repr=False)

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VariantError(f"{path} is missing; {REBUILD}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VariantError(f"{path} is not valid JSON ({e}); {REBUILD}") from e


def _positive_int(value: Any, path: Path, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise VariantError(f"{path}: {key} must be a positive integer, got {value!r}; {REBUILD}")
    return value


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while at < len(data):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if not byte & 0x80:
            break
        shift += 7
    return value, at


def graph_precision(graph: bytes) -> str:
    """The precision of an ONNX graph, read from its serialized bytes (the agent has no `onnx`
    package): the ``bits`` attribute of MatMulNBits nodes (the builder's int4 and int8), else
    the element type of the ``logits`` output (FLOAT 1, FLOAT16 10, BFLOAT16 16)."""
    if b"MatMulNBits" in graph:
        at = graph.find(b"\n\x04bits\x18")  # AttributeProto name="bits", then field i (varint)
        if at >= 0:
            return f"int{_varint(graph, at + 7)[0]}"
    if b"MatMulInteger" in graph or b"DynamicQuantizeMatMul" in graph:
        return "int8"
    at = graph.find(b"\n\x06logits\x12")  # ValueInfoProto name="logits", then its TypeProto
    if at >= 0:
        _, at = _varint(graph, at + 9)  # TypeProto length
        if graph[at:at + 1] == b"\n":  # tensor_type
            _, at = _varint(graph, at + 1)
            if graph[at:at + 1] == b"\x08":  # elem_type
                return {10: "fp16", 16: "bf16"}.get(_varint(graph, at + 1)[0], "fp32")
    return "fp32"


def _chat_template(root: Path) -> str | None:
    template = root / TEMPLATE
    if template.is_file():
        try:
            return template.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise VariantError(f"{template} can't be read ({e}); {REBUILD}") from e
    if not (root / TOKENIZER_CONFIG).is_file():
        return None
    value = _read_json(root / TOKENIZER_CONFIG)
    value = value.get("chat_template") if isinstance(value, dict) else None
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return value if isinstance(value, str) else None


def check_variant(root: Path) -> VariantInfo:
    """The variant in ``root``, checked; raises VariantError naming the first bad file."""
    root = Path(root)
    if not root.is_dir():
        raise VariantError(f"variant directory {root} does not exist; pass a directory built by "
                           "`slmops build` (genai_config.json, model.onnx, tokenizer.json)")
    config_path = root / CONFIG
    config = _read_json(config_path)
    model = config.get("model") if isinstance(config, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(decoder, dict):
        raise VariantError(f"{config_path} has no model.decoder section; {REBUILD}")
    context_length = _positive_int(model.get("context_length"), config_path, "model.context_length")
    vocab_size = _positive_int(model.get("vocab_size"), config_path, "model.vocab_size")
    eos = model.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
    filename = decoder.get("filename", "model.onnx")
    if not isinstance(filename, str) or Path(filename).name != filename or filename in ("", ".", ".."):
        raise VariantError(f"{config_path}: model.decoder.filename must be a file name in the "
                           f"variant directory, got {filename!r}; {REBUILD}")
    graph_path = root / filename
    if not graph_path.is_file():
        raise VariantError(f"{graph_path} is missing; {REBUILD}")
    graph = graph_path.read_bytes()
    files = {CONFIG: config_path.stat().st_size, filename: len(graph)}
    data_name = filename + ".data"
    if data_name.encode() in graph:  # the graph keeps its weights in an external data file
        if not (root / data_name).is_file():
            raise VariantError(f"{root / data_name} is missing (the weights of {filename}); {REBUILD}")
        files[data_name] = (root / data_name).stat().st_size
    tokenizer = _read_json(root / TOKENIZER)
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise VariantError(f"{root / TOKENIZER} is not a tokenizers file (no model section); {REBUILD}")
    files[TOKENIZER] = (root / TOKENIZER).stat().st_size
    template = _chat_template(root)
    for extra in (TOKENIZER_CONFIG, TEMPLATE, "special_tokens_map.json"):
        if (root / extra).is_file():
            files[extra] = (root / extra).stat().st_size
    return VariantInfo(name=root.resolve().name, path=root, files=files,
                       precision=graph_precision(graph), context_length=context_length,
                       vocab_size=vocab_size, eos_token_ids=eos_ids, chat_template=template)
