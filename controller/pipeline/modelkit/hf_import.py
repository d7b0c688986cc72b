"""A pretrained Hugging Face model made a registry-ready directory: from a local directory, a
hub id, or (through gguf_import.py) a GGUF file.

Before anything is loaded, ``config.json``'s ``model_type`` is checked against the causal LMs
this transformers knows (``AutoModelForCausalLM``'s mapping), so an unknown architecture is one
clear line, not a stack trace. The directory is then written under a temporary name beside
``out``: the model's own files, ``SOURCE_FILE`` (what it came from, with the sha256 of every
weight file) and ``slmops.json`` (kind "pretrained", its parameter count), loaded once through
transformers to prove it loads, and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import (
    ModelError,
    file_sha256,
    read_meta,
    replace_dir,
    temp_dir_beside,
    write_meta,
)
from controller.pipeline.modelkit.gguf_import import SOURCE_FILE

KIND = "pretrained"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
# What a hub download fetches: configs, tokenizer files, safetensors weights (not the .bin
# duplicates, ONNX exports or GGUF files many repositories also carry).
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


def read_config(directory: Path, where: str) -> dict[str, Any]:
    """config.json of a model directory; ModelError naming ``where`` if it is missing or bad."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ModelError(f"{where}: no config.json; a Hugging Face model directory has config.json, "
                         "the weights (*.safetensors) and the tokenizer files (save it with "
                         "save_pretrained, or give a .gguf file or hf:ORG/NAME)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelError(f"{where}: config.json is not readable JSON ({e})") from None
    if not isinstance(config, dict):
        raise ModelError(f"{where}: config.json is not a JSON object")
    return config


def check_architecture(config: Mapping[str, Any], where: str) -> str:
    """The config's model_type if transformers' AutoModelForCausalLM knows it."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelError(f"{where}: config.json has no model_type; it is not a transformers model "
                         "config (save the model with save_pretrained)")
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise ModelError(f"{where}: model_type {model_type!r} is not a causal language model that "
                         f"transformers {transformers.__version__} knows; import a supported "
                         "architecture (llama, qwen2, phi3, gemma3, ...) or upgrade transformers "
                         "on the controller")
    return model_type


def weight_files(directory: Path) -> list[str]:
    found = sorted(p.relative_to(directory).as_posix() for p in Path(directory).rglob("*")
                   if p.is_file() and p.suffix in WEIGHT_SUFFIXES and p.name != "training_args.bin")
    return found


def facts(directory: Path) -> dict[str, Any]:
    """What a user asks about a model directory: architecture, parameters, vocabulary, chat
    template, context length (from its files; slmops.json's params when known)."""
    config = read_config(directory, str(directory))
    nested = config.get("text_config")  # multimodal configs (Gemma 3) keep the LM's fields here
    text: dict[str, Any] = nested if isinstance(nested, dict) else {}
    tok_config: dict[str, Any] = {}
    try:
        tok_config = json.loads((Path(directory) / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    template = tok_config.get("chat_template") or (Path(directory) / "chat_template.jinja").is_file() \
        or (Path(directory) / "chat_template.json").is_file()
    archs = config.get("architectures") or []
    return {
        "architecture": archs[0] if archs else "",
        "model_type": config.get("model_type", ""),
        "params": int(read_meta(directory).get("params") or 0),
        "vocab_size": int(config.get("vocab_size") or text.get("vocab_size") or 0),
        "context_length": int(config.get("max_position_embeddings") or text.get("max_position_embeddings")
                              or 0),
        "chat_template": bool(template),
    }


def _place(source: Path, target: Path, link: bool) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if link:
        try:
            os.link(source, target)  # an uploaded input of this job: same disk, never changed
            return
        except OSError:
            pass
    shutil.copyfile(source, target)


def import_dir(files: Mapping[str, Path], out: Path, source: Mapping[str, Any], where: str, *,
               link: bool = False, log: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Write the model whose files are ``files`` (relative path -> file) into ``out``;
    ``source`` describes where it came from (format, hub id, ...). Returns ``facts(out)``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = temp_dir_beside(out)
    try:
        for rel, path in sorted(files.items()):
            _place(path, tmp / rel, link)
        config = read_config(tmp, where)
        check_architecture(config, where)
        weights = weight_files(tmp)
        if not weights:
            raise ModelError(f"{where}: no weights (*.safetensors or pytorch_model*.bin) beside "
                             "config.json")
        log(f"{where}: hashing {len(weights)} weight file(s)")
        hashes = {rel: file_sha256(tmp / rel) for rel in weights}
        log(f"{where}: loading it through transformers to check it loads")
        try:
            model = AutoModelForCausalLM.from_pretrained(tmp)
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(f"{where}: transformers could not load it: {first}") from e
        params = int(sum(p.numel() for p in model.parameters()))
        del model
        if len(tokenizer) == 0:
            raise ModelError(f"{where}: the tokenizer is empty")
        (tmp / SOURCE_FILE).write_text(json.dumps({**source, "weights": hashes}, indent=2) + "\n",
                                       encoding="utf-8")
        write_meta(tmp, {"kind": KIND, "params": params})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return facts(out)


def local_files(directory: Path) -> dict[str, Path]:
    """Every regular file under ``directory`` by its relative path (symlinks are followed: a hub
    cache links its blobs)."""
    found = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            path = Path(root) / name
            if path.is_file() and not name.startswith("."):
                found[path.relative_to(directory).as_posix()] = path
    return found


def download_hub(hub_id: str, into: Path) -> Path:
    """The hub repository's config, tokenizer and safetensors files, downloaded into ``into``.
    ModelError (one line) when the hub can't be reached or has no such model."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    what = f"hf:{hub_id}"
    todo = (f"download it where there is a network (`huggingface-cli download {hub_id} --local-dir DIR`) "
            "and import the directory: `slmops models import DIR --name NAME`")
    try:
        return Path(snapshot_download(hub_id, local_dir=into, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelError(f"{what}: the controller can't reach the Hugging Face hub (no network, or "
                         f"HF_HUB_OFFLINE is set); {todo}") from None
    except GatedRepoError:
        raise ModelError(f"{what}: the model is gated; accept its licence on huggingface.co and set "
                         f"HF_TOKEN on the controller, or {todo}") from None
    except RepositoryNotFoundError:
        raise ModelError(f"{what}: no such model on the Hugging Face hub (or it is private); check "
                         "the id, e.g. hf:HuggingFaceTB/SmolLM2-135M-Instruct") from None
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{what}: the download failed ({first}); {todo}") from None
