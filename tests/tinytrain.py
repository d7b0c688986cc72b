"""Train a tiny model in a few seconds on (prompt, answer) pairs, loss on the answer tokens only,
for fixtures whose output a test can predict. Plain Adam, no scheduler: fast and deterministic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def train_on_answers(untrained: Path, out: Path, pairs: Sequence[tuple[str, str]], *, steps: int,
                     batch: int, lr: float = 1e-2) -> Path:
    """Load ``untrained`` (a model dir with its tokenizer), train ``steps`` batches of ``batch``
    pairs taken in turn, and save model and tokenizer to ``out``."""
    import torch

    from controller.pipeline import chat
    from controller.pipeline.modelkit import load_model

    torch.manual_seed(0)
    model, tokenizer = load_model(untrained, device="cpu")
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    examples = []
    for prompt, answer in pairs:
        head = tokenizer(chat.prompt_text(prompt), add_special_tokens=False)["input_ids"]
        full = tokenizer(chat.full_text(prompt, answer), add_special_tokens=False)["input_ids"]
        examples.append((full, [-100] * len(head) + full[len(head):]))
    pad = tokenizer.pad_token_id
    for step in range(steps):
        chosen = [examples[(step * batch + i) % len(examples)] for i in range(batch)]
        width = max(len(ids) for ids, _ in chosen)
        input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in chosen])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in chosen])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in chosen])
        loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
