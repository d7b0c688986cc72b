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


def answer_ce(logits: Any, labels: Any) -> Any:
    """Mean next-token cross-entropy over the positions whose label is not IGNORE."""
    import torch.nn.functional as F

    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.size(-1)), shift_labels.reshape(-1),
                           ignore_index=IGNORE)


def kd_loss(student_logits: Any, teacher_logits: Any, labels: Any, kd: KDSettings) -> Any:
    """alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * CE, averaged over
    the answer tokens only."""
    import torch.nn.functional as F

    ce = answer_ce(student_logits, labels)
    mask = labels[:, 1:] != IGNORE
    t = kd.temperature
    s = F.log_softmax(student_logits[:, :-1, :].float() / t, dim=-1)[mask]
    q = F.log_softmax(teacher_logits[:, :-1, :].float() / t, dim=-1)[mask]
    kl = F.kl_div(s, q, log_target=True, reduction="batchmean")  # sum over vocab, mean over tokens
    return kd.alpha * t * t * kl + (1 - kd.alpha) * ce
