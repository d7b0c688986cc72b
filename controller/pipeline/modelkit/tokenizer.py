"""Train the byte-level BPE tokenizer the locally built models use.

The result is a plain Hugging Face tokenizer directory (``tokenizer.json``,
``tokenizer_config.json``, ``special_tokens_map.json``) that ``AutoTokenizer.from_pretrained``
loads as a ``PreTrainedTokenizerFast`` carrying :data:`chat.CHAT_TEMPLATE`, so
``apply_chat_template`` yields exactly :func:`chat.prompt_text`. No BOS is added on encode:
training, teachers and the agent's runtime all see the text of :mod:`chat` and nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from controller.pipeline import chat
from controller.pipeline.modelkit.files import ModelError, replace_dir, temp_dir_beside

MIN_VOCAB = 256 + len(chat.SPECIAL_TOKENS)  # every byte plus the special tokens


def train_tokenizer(texts: Iterable[str], out_dir: Path, vocab_size: int = 2048) -> Path:
    """Train a byte-level BPE of ``vocab_size`` tokens on ``texts`` and save it to ``out_dir``
    (written beside it under a temporary name, then renamed into place). Returns ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if not isinstance(vocab_size, int) or vocab_size < MIN_VOCAB:
        raise ModelError(f"vocab_size must be an integer >= {MIN_VOCAB} (256 bytes + "
                         f"{len(chat.SPECIAL_TOKENS)} special tokens), got {vocab_size!r}")
    texts = [t for t in texts if t]
    if not texts:
        raise ModelError("train_tokenizer needs at least one non-empty text")

    bpe = Tokenizer(models.BPE())
    # One token per digit: order numbers, prices and totals are then copied and computed digit
    # by digit, as every rare 5-digit chunk would otherwise be a token of its own, learned by
    # heart from a few examples. No merge ever joins a digit to anything, so a runtime that
    # only applies the byte-level split and the merges (onnxruntime-genai's) encodes the same.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(chat.SPECIAL_TOKENS),  # ids 0..4, PAD first
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=chat.BOS,
        eos_token=chat.END,
        pad_token=chat.PAD,
        additional_special_tokens=[chat.USER, chat.ASSISTANT],
        chat_template=chat.CHAT_TEMPLATE,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids: generate() rejects them
        clean_up_tokenization_spaces=False,
    )
    out_dir = Path(out_dir)
    tmp = temp_dir_beside(out_dir)
    try:
        fast.save_pretrained(tmp)
        replace_dir(tmp, out_dir)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
