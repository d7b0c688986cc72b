"""Turn conversations (:mod:`controller.pipeline.chatdata`) into token batches: rendered with
the model's own chat template (or, for a model without one, the prompt format of :mod:`chat`),
labels on the trained assistant turns only (-100 everywhere else), conversations longer than
``max_length`` cut from the left keeping their last trained assistant turn whole, right
padding, and a seeded batch order that depends only on (seed, epoch), so a resumed run sees
the very same batches.

The assistant spans are found by rendering prefixes: the tokens of
``messages[:i]`` with the generation prompt are the context of turn ``i``, those of
``messages[:i+1]`` end after it; what lies between is the assistant's turn with its end token.
A template that does not render a conversation's beginning as the beginning of the whole
can't be trained this way, and the error names the model."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from controller.pipeline import chat
from controller.pipeline.chatdata import Conversation, as_conversations
from controller.pipeline.jsonl import DataError
from controller.pipeline.train.settings import TrainError

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        """Positions the loss is taken on (the first position predicts nothing)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE)


def check_examples(examples: Sequence[Any]) -> list[Conversation]:
    """The examples as checked conversations; TrainError naming the first bad one."""
    if not examples:
        raise TrainError("no training examples")
    try:
        return as_conversations(examples)
    except DataError as e:
        raise TrainError(str(e)) from None


class Renderer:
    """Renders conversations with the tokenizer's chat template, or the bundled prompt format
    (:data:`chat.CHAT_TEMPLATE`) when it has none; ``model`` names the model in errors."""

    def __init__(self, tokenizer: Any, model: str) -> None:
        self.tokenizer, self.model = tokenizer, model
        self.own_template = bool(getattr(tokenizer, "chat_template", None))
        self.template = tokenizer.chat_template if self.own_template else chat.CHAT_TEMPLATE

    def text(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        try:
            rendered = self.tokenizer.apply_chat_template(
                messages, chat_template=self.template, tokenize=False,
                add_generation_prompt=generation_prompt)
        except Exception as e:  # a template raises whatever its Jinja raises
            raise TrainError(f"the chat template of {self.model} can't render a conversation of "
                             f"roles {[m['role'] for m in messages]}: {e}") from e
        return str(rendered)

    def drops_system(self) -> bool:
        """True when the template shows no system message (the bundled format doesn't)."""
        user = [{"role": "user", "content": "hi"}]
        return self.text([{"role": "system", "content": "be brief"}, *user], True) == self.text(user, True)


def _ids(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without added special tokens (a rendered template carries its own), by the Rust
    tokenizer's batch call when there is one (several times faster than transformers' wrapper)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return list(tokenizer(texts, add_special_tokens=False)["input_ids"])


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _end_ids(tokenizer: Any) -> set[int]:
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    end = tokenizer.convert_tokens_to_ids(chat.END)
    if isinstance(end, int) and end != tokenizer.unk_token_id:
        ids.add(end)
    return ids


def encode_conversation(renderer: Renderer, conv: Conversation, max_length: int) -> Encoded:
    """Token ids of the whole conversation and labels on its trained assistant turns: from
    where the generation prompt ends to the turn's end token (what follows it, such as a
    newline, is the next turn's). Longer than ``max_length``: cut from the left so that the
    last trained turn stays whole; TrainError naming the row if even that doesn't fit."""
    msgs = conv.plain()
    whole = renderer.text(msgs, False)
    spans: list[tuple[str, str]] = []
    for i in conv.trained:
        head, upto = renderer.text(msgs[:i], True), renderer.text(msgs[:i + 1], False)
        if not (upto.startswith(head) and whole.startswith(upto)):
            raise TrainError(f"{conv.where}: the chat template of {renderer.model} does not render "
                             f"the conversation up to messages[{i}] as the beginning of the whole, so "
                             "the loss can't be put on the assistant turns alone; give prompt/answer "
                             "rows or fix the template")
        spans.append((head, upto))
    tokens = _ids(renderer.tokenizer, [whole] + [t for pair in spans for t in pair])
    full, ends = tokens[0], _end_ids(renderer.tokenizer)
    labels = [IGNORE] * len(full)
    last_start = len(full)
    for k in range(len(spans)):
        head_ids, upto_ids = tokens[1 + 2 * k], tokens[2 + 2 * k]
        # A merge across a boundary (the prefix's tokens not a prefix of the whole's) is
        # never labelled as context: the span starts at the first differing token.
        start, end = _common(full, head_ids), _common(full, upto_ids)
        closing = [j for j in range(start, end) if full[j] in ends]
        if closing:
            end = closing[-1] + 1
        labels[start:end] = full[start:end]
        last_start = start
    if len(full) <= max_length:
        return Encoded(full, labels)
    cut = len(full) - max_length
    if cut >= last_start:
        raise TrainError(f"{conv.where}: {len(full)} tokens, and its last assistant turn with the "
                         f"token before it takes {len(full) - last_start + 1}, more than "
                         f"training.max_length {max_length}; raise max_length or shorten the row")
    return Encoded(full[cut:], labels[cut:], truncated=True)


def encode(tokenizer: Any, prompt: str, answer: str, max_length: int) -> Encoded:
    """One prompt/answer pair, encoded as :func:`encode_all` does."""
    conv = as_conversations([{"prompt": prompt, "answer": answer}])[0]
    return encode_conversation(Renderer(tokenizer, "the model"), conv, max_length)


@dataclass(frozen=True)
class EncodedSet:
    items: list[Encoded]
    truncated: int  # cut from the left to fit max_length
    system_dropped: int  # with a system message the template doesn't show
    own_template: bool  # the model's chat template (False: the bundled prompt format)

    @property
    def trained_tokens(self) -> int:
        return sum(item.trained_tokens for item in self.items)


def encode_all(tokenizer: Any, examples: Sequence[Any], max_length: int, model: str = "the model"
               ) -> EncodedSet:
    """Every example (a row dict or a Conversation) encoded; see :func:`encode_conversation`."""
    renderer = Renderer(tokenizer, model)
    convs = as_conversations(examples)
    items = [encode_conversation(renderer, conv, max_length) for conv in convs]
    with_system = sum(1 for c in convs if c.messages[0]["role"] == "system")
    dropped = with_system if with_system and renderer.drops_system() else 0
    return EncodedSet(items, sum(i.truncated for i in items), dropped, renderer.own_template)


def examples_digest(examples: Sequence[Any]) -> str:
    """sha256 of the examples' messages, to tell a resume of the same run apart."""
    h = hashlib.sha256()
    for conv in as_conversations(examples):
        h.update(json.dumps(conv.messages, ensure_ascii=False, sort_keys=True).encode("utf-8"))
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
