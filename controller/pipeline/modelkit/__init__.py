"""Tokenizers and Llama models built locally, and loading any causal LM (directory or hub id).

Importing this package is light; torch and transformers load inside the functions."""

from controller.pipeline.modelkit.files import META_FILE, ModelError, dir_size, read_meta, write_meta
from controller.pipeline.modelkit.llama import SIZES, LlamaSize, build_model, resolve_size
from controller.pipeline.modelkit.loading import count_params, load_model, resolve_device
from controller.pipeline.modelkit.tokenizer import train_tokenizer

__all__ = [
    "META_FILE",
    "SIZES",
    "LlamaSize",
    "ModelError",
    "build_model",
    "count_params",
    "dir_size",
    "load_model",
    "read_meta",
    "resolve_device",
    "resolve_size",
    "train_tokenizer",
    "write_meta",
]
