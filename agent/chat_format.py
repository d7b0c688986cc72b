"""The one prompt format of the models slmops builds, shared by training, teachers, evaluation,
the build's check and the agent's on-device gate (the controller imports it from here:
controller/pipeline/chat.py), and how an answer is compared with its expected one.

A turn is ``<|user|>\\n{prompt}\\n<|assistant|>\\n{answer}<|end|>``. The tokenizer we train
carries the same format as a Jinja ``chat_template``, so ``apply_chat_template`` (transformers,
onnxruntime-genai) yields byte-for-byte what :func:`prompt_text` yields.
"""

from __future__ import annotations

import unicodedata

PAD, BOS, USER, ASSISTANT, END = "<|pad|>", "<|bos|>", "<|user|>", "<|assistant|>", "<|end|>"
SPECIAL_TOKENS = (PAD, BOS, USER, ASSISTANT, END)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|>\n{{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}<|assistant|>\n{{ message['content'] }}<|end|>"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def prompt_text(prompt: str) -> str:
    """What the model sees before it answers."""
    return f"{USER}\n{prompt}\n{ASSISTANT}\n"


def full_text(prompt: str, answer: str) -> str:
    """A whole training example; the loss is taken on ``answer + END`` only."""
    return prompt_text(prompt) + answer + END


def clean_answer(generated: str) -> str:
    """The answer in a generated continuation: up to the first END (or PAD), stripped."""
    for stop in (END, PAD):
        cut = generated.find(stop)
        if cut >= 0:
            generated = generated[:cut]
    return generated.strip()


def normalize(text: str) -> str:
    """What exact match compares: NFKC, case-folded, runs of whitespace made one space, stripped.
    Punctuation and digits are kept: "$12.50" and "$1250" are different answers."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())
