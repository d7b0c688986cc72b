"""Build Llama-architecture causal LMs from a named size, randomly initialised with a seed.

The sizes stand in for a real teacher and student where no model hub is reachable: "teacher"
is about 6–7 M parameters (at a 900–2048-token vocabulary), "student" about 9–13 % of it and
several times faster per token; "tiny" is for tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import ModelError, replace_dir, temp_dir_beside, write_meta


@dataclass(frozen=True)
class LlamaSize:
    """The shape of a Llama model; the vocabulary size comes from the tokenizer."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    max_position_embeddings: int = 256

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ModelError(f"model size: {field.name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ModelError(f"model size: hidden_size {self.hidden_size} is not divisible by "
                             f"num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 16:
            # onnxruntime's GroupQueryAttention on the CPU, which every built variant runs, needs it.
            raise ModelError(f"model size: head size hidden_size/num_heads = "
                             f"{self.hidden_size // self.num_heads} must be a multiple of 16 "
                             "(onnxruntime's attention kernel needs it)")
        if self.num_heads % self.num_kv_heads:
            raise ModelError(f"model size: num_heads {self.num_heads} is not divisible by "
                             f"num_kv_heads {self.num_kv_heads}")


SIZES: dict[str, LlamaSize] = {
    # ~7.0 M parameters at vocab 2048 (1.0 M of them embedding + output layer), 6.2 M at 864.
    "teacher": LlamaSize(hidden_size=256, num_layers=8, num_heads=8, num_kv_heads=4,
                         intermediate_size=688),
    # ~0.9 M parameters at vocab 2048 (0.58 M at the demo's 864): 9-13 % of the teacher.
    "student": LlamaSize(hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                         intermediate_size=344),
    # ~0.25 M parameters at vocab 2048 (fewer with the small vocabularies tests train).
    "tiny": LlamaSize(hidden_size=48, num_layers=2, num_heads=3, num_kv_heads=3,
                      intermediate_size=128),
}


def resolve_size(size: str | Mapping[str, int | str]) -> LlamaSize:
    """A named size, or a mapping of LlamaSize fields; a mapping with "base": NAME overrides
    the fields of that named size."""
    if isinstance(size, str):
        if size not in SIZES:
            raise ModelError(f"unknown model size {size!r}; known sizes: {', '.join(SIZES)}")
        return SIZES[size]
    if not isinstance(size, Mapping):
        raise ModelError(f"model size must be a name or a mapping, got {type(size).__name__}")
    fields = dict(size)
    base_name = fields.pop("base", None)
    if base_name is not None and not isinstance(base_name, str):
        raise ModelError(f"model size: base must be a named size ({', '.join(SIZES)}), got {base_name!r}")
    base = dataclasses.asdict(resolve_size(base_name)) if base_name is not None else {}
    known = {f.name for f in dataclasses.fields(LlamaSize)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ModelError(f"model size: unknown field(s) {', '.join(unknown)}; known: "
                         f"{', '.join(sorted(known))} (and 'base')")
    merged: dict[str, Any] = {**base, **fields}  # LlamaSize checks every value
    missing = sorted(known - set(merged) - {"max_position_embeddings"})
    if missing:
        raise ModelError(f"model size: missing field(s) {', '.join(missing)} (or give 'base')")
    return LlamaSize(**merged)


def llama_config(size: LlamaSize, tokenizer: Any) -> Any:
    """The LlamaConfig for ``size`` with the vocabulary and special ids of ``tokenizer``."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads,
        intermediate_size=size.intermediate_size,
        max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=False,  # an untied output layer quantizes to int4 (FINDINGS.md)
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )


def build_model(size: str | Mapping[str, int | str], tokenizer_dir: Path, out_dir: Path,
                seed: int = 0) -> Path:
    """Build a randomly initialised (seeded) Llama of ``size`` for the tokenizer in
    ``tokenizer_dir`` and write it, with the tokenizer and ``slmops.json``, to ``out_dir``."""
    import shutil

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaForCausalLM

    shape = resolve_size(size)
    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "tokenizer.json").is_file():
        raise ModelError(f"tokenizer directory {tokenizer_dir} has no tokenizer.json; build one with "
                         "train_tokenizer first")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = llama_config(shape, tokenizer)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, do_sample=False)
    params = sum(p.numel() for p in model.parameters())

    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_meta(tmp, {"kind": "base", "params": params, "base": None,
                         "size": size if isinstance(size, str) else dict(size), "seed": seed})
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
