"""Losses on the answer tokens: cross-entropy, and logit-level distillation from a teacher that
shares the student's tokenizer (KL at temperature T mixed with the cross-entropy by alpha)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from controller.pipeline.train.data import IGNORE
from controller.pipeline.train.settings import KDSettings, TrainError


def check_same_tokenizer(student_dir: Path, teacher_dir: Path) -> None:
    """Raise TrainError naming the first difference when the two models' tokenizers (vocabulary,
    special tokens) or output vocabulary sizes differ: logit KD compares them position by id."""
    import json

    from transformers import AutoTokenizer

    names = {"student": Path(student_dir), "teacher": Path(teacher_dir)}
    toks = {}
    for role, path in names.items():
        try:
            toks[role] = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise TrainError(f"logit KD: could not load the {role}'s tokenizer from {path}: {e}") from e
    student, teacher = toks["student"], toks["teacher"]
    hint = "; logit KD needs one tokenizer for both (distill from the teacher's answers instead)"

    for attr in ("bos_token", "eos_token", "pad_token", "unk_token"):
        s, t = getattr(student, attr), getattr(teacher, attr)
        if s != t:
            raise TrainError(f"logit KD: {attr} differs: student {s!r}, teacher {t!r}{hint}")
    s_extra, t_extra = sorted(student.additional_special_tokens), sorted(teacher.additional_special_tokens)
    if s_extra != t_extra:
        raise TrainError(f"logit KD: special tokens differ: student {s_extra}, teacher {t_extra}{hint}")
    s_vocab, t_vocab = student.get_vocab(), teacher.get_vocab()
    if len(s_vocab) != len(t_vocab):
        raise TrainError(f"logit KD: vocabulary sizes differ: student {len(s_vocab)}, teacher "
                         f"{len(t_vocab)}{hint}")
    for token, index in sorted(s_vocab.items(), key=lambda kv: kv[1]):
        if t_vocab.get(token) != index:
            raise TrainError(f"logit KD: vocabularies differ: token {token!r} is id {index} in the "
                             f"student and {t_vocab.get(token)!r} in the teacher{hint}")
    sizes = {}
    for role, path in names.items():
        config = path / "config.json"
        if config.is_file():
            sizes[role] = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
    if len(sizes) == 2 and sizes["student"] != sizes["teacher"]:
        raise TrainError(f"logit KD: output vocabulary sizes (config vocab_size) differ: student "
                         f"{sizes['student']}, teacher {sizes['teacher']}{hint}")


def answer_positions(labels: Any) -> Any:
    """The sequence positions whose next token carries the loss in any row of the batch: the only
    positions whose logits training needs. The output matrix is a large share of a small
    model's compute (SmolLM2-135M's 49 152 x 576 is as much as 8 of its layers), and an answer
    is a fraction of each sequence, so computing its logits only there saves that share."""
    return (labels[:, 1:] != IGNORE).any(dim=0).nonzero().squeeze(-1)


def _aligned(logits: Any, labels: Any, positions: Any | None) -> tuple[Any, Any]:
    """(logits, the token each predicts): all positions shifted by one, or only ``positions``
    (the logits were computed there alone)."""
    if positions is None:
        return logits[:, :-1, :], labels[:, 1:]
    return logits, labels[:, positions + 1]


def answer_ce(logits: Any, labels: Any, positions: Any | None = None) -> Any:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE. With
    ``positions``, ``logits`` hold only those positions (see answer_positions)."""
    import torch.nn.functional as F

    shift_logits, shift_labels = _aligned(logits, labels, positions)
    shift_logits = shift_logits.float()
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE)


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, kd: KDSettings,
            positions: Any | None = None) -> Any:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE, averaged over
    the answer tokens only. With ``positions``, both logits hold only those positions."""
    import torch.nn.functional as F

    ce = answer_ce(student_logits, labels, positions)
    student, targets = _aligned(student_logits, labels, positions)
    teacher, _ = _aligned(teacher_logits, labels, positions)
    mask = targets != IGNORE
    t = kd.temperature
    s = F.log_softmax(student.float() / t, dim=-1)[mask]
    q = F.log_softmax(teacher.float() / t, dim=-1)[mask]
    kl = F.kl_div(s, q, log_target=True, reduction="batchmean")  # sum over vocab, mean over tokens
    return kd.alpha * t * t * kl + (1 - kd.alpha) * ce
