"""Check a model variant directory before anything loads it.

Two layouts are served:

- onnxruntime-genai's (the builder's route): ``genai_config.json``, the decoder ``model.onnx``
  (its weights in ``model.onnx.data`` when the graph stores them outside), ``tokenizer.json``
  and, optionally, ``tokenizer_config.json`` / ``chat_template.jinja``;
- the fallback for architectures that builder does not know (optimum-onnx's export, run by the
  plain onnxruntime loop of ort_loop.py): ``slmops-variant.json`` saying ``"runtime":
  "onnxruntime"``, ``model.onnx`` with ``past_key_values.*`` inputs, ``config.json`` (context
  length, vocabulary, end token; ``generation_config.json`` may name the end token too) and the
  same tokenizer files; no ``genai_config.json``.

:func:`check_variant` reads only the small files and scans the graph (in chunks; a weights file
is only stat'ed), so it is cheap, and every failure names the file and what to do. Loading the
weights is the engine's job; it reports its failures as :class:`VariantError` too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG, TOKENIZER, TOKENIZER_CONFIG, TEMPLATE = (
    "genai_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
VARIANT_META, MODEL_CONFIG, GENERATION_CONFIG, GRAPH = (
    "slmops-variant.json", "config.json", "generation_config.json", "model.onnx")
RUNTIME_GENAI, RUNTIME_ORT = "onnxruntime-genai", "onnxruntime"  # slmops-variant.json "runtime"
PRECISIONS = ("int4", "int8", "fp16", "fp32", "bf16")
# config.json keys that hold the context length, by architecture (Llama, GPT-2, OPT / Bloom, ...)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length")
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
    runtime: str = RUNTIME_GENAI  # what runs it: onnxruntime-genai, or the plain onnxruntime loop
    chat_template_file: str | None = None  # the file the chat template came from
    adapter: str | None = None  # a LoRA adapter file its graph needs (slmops-variant.json "adapter")

    @property
    def size_bytes(self) -> int:
        return sum(self.files.values())

    @property
    def graph(self) -> str:
        """The decoder graph's file name."""
        return next(name for name in self.files if name.endswith(".onnx"))


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise VariantError(f"{path} is missing; {REBUILD}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VariantError(f"{path} is not valid JSON ({e}); {REBUILD}") from e


def _read_object(path: Path) -> dict[str, Any]:
    value = _read_json(path)
    if not isinstance(value, dict):
        raise VariantError(f"{path} must hold a JSON object, got {type(value).__name__}; {REBUILD}")
    return value


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


# What graph_precision reads: each marker's first occurrence and the bytes after it.
_MARKERS = (b"MatMulNBits", b"\n\x04bits\x18", b"MatMulInteger", b"DynamicQuantizeMatMul",
            b"\n\x06logits\x12")
_AFTER = 32
_CHUNK = 1 << 20


def scan_graph(path: Path, names: Iterable[str] = ()) -> tuple[int, str, set[str]]:
    """(size, precision, which of ``names`` the graph mentions) of the ONNX file ``path``, read
    in chunks: a graph that keeps its weights inside (optimum's export) can be gigabytes, and
    reading it whole would double the memory the model takes while it loads."""
    wanted = {n.encode(): n for n in names}
    needles = set(_MARKERS) | set(wanted)
    keep = max(len(n) for n in needles) + _AFTER
    found: dict[bytes, bytes] = {}
    size, tail = 0, b""
    with path.open("rb") as f:
        while True:
            chunk = f.read(_CHUNK)
            size += len(chunk)
            buffer = tail + chunk
            for needle in needles:
                if needle not in found and (at := buffer.find(needle)) >= 0 and (
                        not chunk or at + len(needle) + _AFTER <= len(buffer)):
                    found[needle] = buffer[at:at + len(needle) + _AFTER]
            if not chunk:
                break
            tail = buffer[-keep:]
    precision = graph_precision(b"".join(found.get(m, b"") for m in _MARKERS))
    return size, precision, {wanted[n] for n in found if n in wanted}


def _chat_template(root: Path) -> tuple[str | None, str | None]:
    """(the chat template, the file it came from): chat_template.jinja, else the
    ``chat_template`` of tokenizer_config.json."""
    template = root / TEMPLATE
    if template.is_file():
        try:
            return template.read_text(encoding="utf-8"), TEMPLATE
        except (OSError, UnicodeDecodeError) as e:
            raise VariantError(f"{template} can't be read ({e}); {REBUILD}") from e
    if not (root / TOKENIZER_CONFIG).is_file():
        return None, None
    value = _read_json(root / TOKENIZER_CONFIG)
    value = value.get("chat_template") if isinstance(value, dict) else None
    if isinstance(value, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        value = named.get("default")
    return (value, TOKENIZER_CONFIG) if isinstance(value, str) else (None, None)


def registered_name(root: Path) -> tuple[str, str]:
    """(model name, version) a built variant records in slmops-variant.json (``"model":
    "NAME:VERSION"``, written by the build and the registry); ("", "") when it records none."""
    path = Path(root) / VARIANT_META
    if not path.is_file():
        return "", ""
    model = _read_object(path).get("model")
    if not isinstance(model, str) or not model:
        return "", ""
    name, _, version = model.partition(":")
    return name, version


def variant_runtime(root: Path) -> str:
    """What runs the variant in ``root``: RUNTIME_ORT when its slmops-variant.json says so,
    else RUNTIME_GENAI (the builder's variants, and any directory in genai's layout)."""
    path = Path(root) / VARIANT_META
    if not path.is_file():
        return RUNTIME_GENAI
    runtime = _read_object(path).get("runtime", RUNTIME_GENAI)
    if runtime not in (RUNTIME_GENAI, RUNTIME_ORT):
        raise VariantError(f"{path}: runtime must be {RUNTIME_GENAI!r} or {RUNTIME_ORT!r}, got "
                           f"{runtime!r}; {REBUILD}")
    return str(runtime)


def check_variant(root: Path) -> VariantInfo:
    """The variant in ``root``, checked; raises VariantError naming the first bad file."""
    root = Path(root)
    if not root.is_dir():
        raise VariantError(f"variant directory {root} does not exist; pass a directory built by "
                           "`slmops build` (genai_config.json, model.onnx, tokenizer.json)")
    return _check_ort(root) if variant_runtime(root) == RUNTIME_ORT else _check_genai(root)


def _check_graph(root: Path, filename: str, data_names: tuple[str, ...]) -> tuple[dict[str, int], str]:
    """{file: size} of the graph and the external weights it names, and its precision."""
    graph_path = root / filename
    if not graph_path.is_file():
        raise VariantError(f"{graph_path} is missing; {REBUILD}")
    size, precision, mentioned = scan_graph(graph_path, data_names)
    files = {filename: size}
    for data_name in data_names:
        if data_name in mentioned:  # the graph keeps its weights in an external data file
            if not (root / data_name).is_file():
                raise VariantError(f"{root / data_name} is missing (the weights of {filename}); {REBUILD}")
            files[data_name] = (root / data_name).stat().st_size
    return files, precision


def _check_tokenizer(root: Path, files: dict[str, int]) -> dict[str, Any]:
    tokenizer = _read_json(root / TOKENIZER)
    if not isinstance(tokenizer, dict) or not isinstance(tokenizer.get("model"), dict):
        raise VariantError(f"{root / TOKENIZER} is not a tokenizers file (no model section); {REBUILD}")
    files[TOKENIZER] = (root / TOKENIZER).stat().st_size
    return tokenizer


def _add_extras(root: Path, files: dict[str, int], names: tuple[str, ...]) -> None:
    for extra in names:
        if (root / extra).is_file():
            files[extra] = (root / extra).stat().st_size


def _check_genai(root: Path) -> VariantInfo:
    config_path = root / CONFIG
    if not config_path.is_file():
        raise VariantError(f"{config_path} is missing; {REBUILD} (a variant for the plain onnxruntime "
                           f"runtime says \"runtime\": \"{RUNTIME_ORT}\" in its {VARIANT_META} instead)")
    config = _read_json(config_path)
    model = config.get("model") if isinstance(config, dict) else None
    decoder = model.get("decoder") if isinstance(model, dict) else None
    if not isinstance(model, dict) or not isinstance(decoder, dict):
        raise VariantError(f"{config_path} has no model.decoder section; {REBUILD}")
    context_length = _positive_int(model.get("context_length"), config_path, "model.context_length")
    vocab_size = _positive_int(model.get("vocab_size"), config_path, "model.vocab_size")
    eos = model.get("eos_token_id")
    eos_ids = tuple(eos) if isinstance(eos, list) else (eos,) if isinstance(eos, int) else ()
    filename = decoder.get("filename", GRAPH)
    if not isinstance(filename, str) or Path(filename).name != filename or filename in ("", ".", ".."):
        raise VariantError(f"{config_path}: model.decoder.filename must be a file name in the "
                           f"variant directory, got {filename!r}; {REBUILD}")
    graph_files, precision = _check_graph(root, filename, (filename + ".data",))
    files = {CONFIG: config_path.stat().st_size, **graph_files}
    _check_tokenizer(root, files)
    template, template_file = _chat_template(root)
    _add_extras(root, files, (TOKENIZER_CONFIG, TEMPLATE, "special_tokens_map.json"))
    adapter = _adapter(root, files)
    return VariantInfo(name=root.resolve().name, path=root, files=files, precision=precision,
                       context_length=context_length, vocab_size=vocab_size, eos_token_ids=eos_ids,
                       chat_template=template, runtime=RUNTIME_GENAI, chat_template_file=template_file,
                       adapter=adapter)


def _adapter(root: Path, files: dict[str, int]) -> str | None:
    """The LoRA adapter file slmops-variant.json names (the base graph takes its weights as
    inputs, so the variant does not run without it); None if it names none."""
    meta_path = root / VARIANT_META
    if not meta_path.is_file():
        return None
    name = _read_object(meta_path).get("adapter")
    if name is None:
        return None
    if not isinstance(name, str) or Path(name).name != name or not name.endswith(".onnx_adapter"):
        raise VariantError(f"{meta_path}: adapter must be a file name ending in .onnx_adapter in the "
                           f"variant directory, got {name!r}; {REBUILD}")
    if not (root / name).is_file():
        raise VariantError(f"{root / name} is missing (the LoRA adapter {meta_path} names); {REBUILD}")
    files[name] = (root / name).stat().st_size
    return name


def _ids(value: Any) -> list[int]:
    values = value if isinstance(value, list) else [value]
    return [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v >= 0]


def token_text(value: Any) -> str:
    """A special token of tokenizer_config.json: a string, or an AddedToken object."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _token_id(tokenizer: dict[str, Any], text: str) -> int | None:
    for added in tokenizer.get("added_tokens") or []:
        if isinstance(added, dict) and added.get("content") == text and isinstance(added.get("id"), int):
            return int(added["id"])
    vocab = tokenizer["model"].get("vocab")
    found = vocab.get(text) if isinstance(vocab, dict) else None
    return found if isinstance(found, int) else None


def _check_ort(root: Path) -> VariantInfo:
    meta = _read_object(root / VARIANT_META)
    files, precision = _check_graph(root, GRAPH, (GRAPH + ".data", GRAPH + "_data"))
    tokenizer = _check_tokenizer(root, files)
    config_path = root / MODEL_CONFIG
    config = _read_object(config_path)
    files[MODEL_CONFIG] = config_path.stat().st_size
    key = next((k for k in CONTEXT_KEYS if k in config), None)
    if key is None:
        raise VariantError(f"{config_path} names no context length (none of {', '.join(CONTEXT_KEYS)}); "
                           f"{REBUILD}")
    context_length = _positive_int(config[key], config_path, key)
    vocab_size = _positive_int(config.get("vocab_size"), config_path, "vocab_size")
    generation = _read_object(root / GENERATION_CONFIG) if (root / GENERATION_CONFIG).is_file() else {}
    eos = _ids(generation.get("eos_token_id")) or _ids(config.get("eos_token_id"))
    tokenizer_config = (_read_object(root / TOKENIZER_CONFIG) if (root / TOKENIZER_CONFIG).is_file()
                        else {})
    eos_text = token_text(tokenizer_config.get("eos_token"))
    if eos_text and (eos_id := _token_id(tokenizer, eos_text)) is not None and eos_id not in eos:
        eos.append(eos_id)
    if not eos:
        raise VariantError(f"{config_path}: eos_token_id is missing (nor does {GENERATION_CONFIG} or "
                           f"{TOKENIZER_CONFIG} name an end token), so generation could not stop; {REBUILD}")
    template, template_file = _chat_template(root)
    _add_extras(root, files, (GENERATION_CONFIG, TOKENIZER_CONFIG, TEMPLATE, "special_tokens_map.json"))
    if meta.get("precision") in PRECISIONS:  # what it was built as (fp16 keeps fp32 inputs and outputs)
        precision = str(meta["precision"])
    return VariantInfo(name=root.resolve().name, path=root, files=files, precision=precision,
                       context_length=context_length, vocab_size=vocab_size, eos_token_ids=tuple(eos),
                       chat_template=template, runtime=RUNTIME_ORT, chat_template_file=template_file)
