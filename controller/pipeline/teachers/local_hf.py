"""A teacher that is a Hugging Face causal LM on this host: a model directory (ours or any
downloaded one), a LoRA adapter directory, or a hub id. Generation is the evaluation harness's
(batched, left padded, chat template, stops at the end token), on a GPU when there is one."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from controller.pipeline.events import Events
from controller.pipeline.modelkit.files import META_FILE
from controller.pipeline.teachers.base import Answer, GenerationSettings, Prompt, TeacherError

TASK = "teacher/generate"
FINGERPRINTED = (".safetensors", ".bin", ".json")  # weights, config, tokenizer (not slmops.json:
# the registry may add to it without changing the model)


class LocalHFTeacher:
    def __init__(self, model: str | Path, device: str = "auto") -> None:
        from controller.pipeline.modelkit import ModelError, load_model
        from controller.pipeline.modelkit.loading import looks_like_path

        if not isinstance(model, str | Path) or not str(model).strip():
            raise TeacherError(f"teacher.model: expected a model directory or hub id, got {model!r}")
        self.ref = model
        self.device_asked = device
        try:
            self._model, self._tokenizer = load_model(model, device=device)
        except ModelError as e:
            raise TeacherError(f"teacher.model: {e}") from e
        self.device = str(next(self._model.parameters()).device)
        self._identity: dict[str, Any] = {"kind": "local", "model": str(model)}
        if looks_like_path(model):
            path = Path(model).expanduser().resolve()
            self._identity.update(path=str(path), sha256=_fingerprint(path))
        else:
            revision = getattr(self._model.config, "_commit_hash", None)
            self._identity["revision"] = revision or "unknown"
        self._announced = False

    def identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def generate(self, prompts: Sequence[Prompt], settings: GenerationSettings,
                 events: Events) -> list[Answer]:
        """A conversation is rendered whole (system message, earlier turns) with the model's chat
        template and the generation prompt; a plain prompt as the user's one message."""
        from controller.pipeline.evaluate.harness import generate_detailed

        if not self._announced:
            events.log(f"teacher: {self.ref} on {self.device}"
                       + (" (no GPU here)" if self.device_asked == "auto" and self.device == "cpu" else ""))
            self._announced = True
        generations = generate_detailed(
            self._model, self._tokenizer, prompts, max_new_tokens=settings.max_new_tokens,
            batch_size=settings.batch_size, temperature=settings.temperature, top_p=settings.top_p,
            seed=settings.seed, events=events, task=TASK)
        return [Answer(g.text, g.finish_reason) for g in generations]


def _fingerprint(path: Path) -> str:
    """sha256 over the names and bytes of the directory's weight, config and tokenizer files, so
    labelled data records exactly which teacher wrote it (and a resume notices a changed one)."""
    digest = hashlib.sha256()
    for file in sorted(f for f in path.iterdir() if f.is_file() and f.suffix in FINGERPRINTED
                       and f.name != META_FILE):
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
