"""Turn task examples into token batches: the chat format of :mod:`chat`, labels only on the
answer and END (-100 on the prompt), right padding, truncation, and a seeded batch order that
depends only on (seed, epoch), so a resumed run sees the very same batches."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.pipeline import chat
from controller.pipeline.train.settings import TrainError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False


def check_examples(examples: Sequence[Mapping[str, Any]]) -> None:
    """Every example has a non-empty string "prompt" and "answer"."""
    if not examples:
        raise TrainError("no training examples")
    for index, row in enumerate(examples):
        for field in ("prompt", "answer"):
            value = row.get(field) if isinstance(row, Mapping) else None
            if not isinstance(value, str) or not value.strip():
                ident = row.get("id") if isinstance(row, Mapping) else None
                where = f"example {index}" + (f" (id {ident!r})" if ident else "")
                raise TrainError(f"{where}: field {field!r} is missing or not a non-empty string")


def encode(tokenizer: Any, prompt: str, answer: str, max_length: int) -> Encoded:
    """Token ids of ``chat.full_text(prompt, answer)`` and labels that are IGNORE on the prompt
    part. The split is the longest common prefix of the prompt's and the full text's tokens, so
    a merge across the boundary is never mislabelled as prompt."""
    return encode_all(tokenizer, [{"prompt": prompt, "answer": answer}], max_length, keep_empty=True)[0][0]


def _label(full: list[int], head: list[int], max_length: int) -> Encoded:
    cut = 0
    while cut < min(len(full), len(head)) and full[cut] == head[cut]:
        cut += 1
    kept = full[:max_length]
    return Encoded(kept, [IGNORE] * min(cut, len(kept)) + kept[cut:], len(full) > max_length)


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without added special tokens; the Rust tokenizer's batch call when there is one
    (several times faster than going through transformers' wrapper)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_all(tokenizer: Any, examples: Sequence[Mapping[str, Any]], max_length: int,
               keep_empty: bool = False) -> tuple[list[Encoded], int, int]:
    """(encoded examples, number truncated, number dropped because nothing of the answer was
    left within ``max_length``; with ``keep_empty`` those are kept and not counted)."""
    fulls = _ids(tokenizer, [chat.full_text(r["prompt"], r["answer"]) for r in examples])
    heads = _ids(tokenizer, [chat.prompt_text(r["prompt"]) for r in examples])
    kept: list[Encoded] = []
    truncated = dropped = 0
    for full, head in zip(fulls, heads, strict=True):
        item = _label(full, head, max_length)
        truncated += item.truncated
        if not keep_empty and all(label == IGNORE for label in item.labels):
            dropped += 1
            continue
        kept.append(item)
    return kept, truncated, dropped


def examples_digest(examples: Sequence[Mapping[str, Any]]) -> str:
    """sha256 of the examples' prompts and answers, to tell a resume of the same run apart."""
    h = hashlib.sha256()
    for row in examples:
        h.update(json.dumps([row["prompt"], row["answer"]], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def steps_per_epoch(n: int, global_batch: int) -> int:
    return max(1, -(-n // global_batch))


def batch_indices(n: int, global_batch: int, seed: int, step: int) -> list[int]:
    """The example indices of global step ``step`` (0-based): epoch ``step // steps_per_epoch``
    is a permutation seeded by (seed, epoch), cut into batches of ``global_batch``."""
    import torch

    per_epoch = steps_per_epoch(n, global_batch)
    epoch, within = divmod(step, per_epoch)
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    return order[within * global_batch:(within + 1) * global_batch]


def shard(indices: list[int], process_index: int, num_processes: int) -> list[int]:
    """This process's share of a global batch (every process gets at least one example)."""
    mine = indices[process_index::num_processes]
    return mine or indices[:1]


def collate(items: Sequence[Encoded], pad_id: int) -> dict[str, Any]:
    """Right-padded input_ids, attention_mask and labels tensors."""
    import torch

    width = max(len(item.input_ids) for item in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        length = len(item.input_ids)
        ids[row, :length] = torch.tensor(item.input_ids)
        labels[row, :length] = torch.tensor(item.labels)
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
