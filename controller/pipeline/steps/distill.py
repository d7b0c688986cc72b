"""distill: a teacher answers the prompts, and a student learns its answers.

The teacher is a local model (``{kind: local, model: <model ref>}``) or any OpenAI-compatible
endpoint (``{kind: openai, base_url, model, api_key_env, ...}``). Answers are validated (empty,
truncated, too long, or failing the task's validator → dropped and counted) and written to
``labelled.jsonl`` with a ``.meta.json`` naming the teacher; labelling resumes where it stopped.
The student is a fresh model of a named size on the teacher's tokenizer, or an existing model.
With ``kd`` (local teacher, same tokenizer) the student also matches the teacher's logits.

Outputs: ``model`` (the student, slmops.json kind "distilled") and ``labelled`` (the data).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.pipeline import refs, validators
from controller.pipeline.chatdata import PROMPTS
from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.refs import DataRef, ModelRef
from controller.pipeline.steps.base import ResolvedModel, Step, StepContext, StepError
from controller.pipeline.steps.init_model import check_size
from controller.pipeline.steps.params import ParamError, param
from controller.pipeline.steps.training import (
    KDParams,
    TrainingParams,
    data_name,
    run_training,
)


@dataclass(frozen=True, kw_only=True)
class TeacherParams:
    kind: Literal["local", "openai"] = param("local", "local: a Hugging Face causal LM; openai: an "
                                                      "OpenAI-compatible endpoint")
    model: str = param(help="local: a model reference (${step.model}, registry:NAME, hf:ID, path); "
                            "openai: the model name the endpoint serves")
    base_url: str = param("", "openai: the endpoint, e.g. http://127.0.0.1:8000/v1")
    api_key_env: str = param("OPENAI_API_KEY", "openai: the environment variable holding the key")
    concurrency: int = param(8, "openai: requests in flight")
    timeout_s: float = param(30.0, "openai: seconds per request")
    retries: int = param(3, "openai: retries per request (backoff with jitter)")

    def __post_init__(self) -> None:
        if self.kind == "local":
            try:
                refs.parse_model_ref(self.model)
            except refs.RefError as e:
                raise ParamError("model", str(e)) from None
            if self.base_url:
                raise ParamError("base_url", "only for kind: openai")
        elif not self.base_url.startswith(("http://", "https://")):
            raise ParamError("base_url", f"kind openai needs an http(s) URL, got {self.base_url!r}")
        if self.concurrency < 1 or self.retries < 0 or self.timeout_s <= 0:
            bad = next(n for n, ok in (("concurrency", self.concurrency >= 1), ("retries", self.retries >= 0),
                                       ("timeout_s", self.timeout_s > 0)) if not ok)
            raise ParamError(bad, f"out of range: {getattr(self, bad)!r}")

    def spec(self, model_source: str, device: str) -> dict[str, Any]:
        if self.kind == "local":
            return {"kind": "local", "model": model_source, "device": device}
        return {"kind": "openai", "base_url": self.base_url, "model": self.model,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                "timeout_s": self.timeout_s, "retries": self.retries}


@dataclass(frozen=True, kw_only=True)
class StudentParams:
    size: str | dict[str, int | str] | None = param(None, "a fresh student of this size on the teacher's "
                                                          "tokenizer (teacher, student, tiny or a shape)")
    model: ModelRef | None = param(None, "or an existing model to train further")

    def __post_init__(self) -> None:
        if (self.size is None) == (self.model is None):
            raise ParamError("size", "give exactly one of size (a fresh student) or model (an existing one)")
        if self.size is not None:
            check_size("size", self.size)


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    max_new_tokens: int = param(64, "longest answer; one that reaches it is dropped as truncated")
    temperature: float = param(0.0, "0 = greedy")
    top_p: float = param(1.0, "nucleus mass when sampling")
    batch_size: int = param(32, "prompts per batch (local teacher)")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            bad = "max_new_tokens" if self.max_new_tokens < 1 else "batch_size"
            raise ParamError(bad, f"must be >= 1, got {getattr(self, bad)}")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            bad = "temperature" if self.temperature < 0 else "top_p"
            raise ParamError(bad, f"out of range: {getattr(self, bad)!r}")


@dataclass(frozen=True, kw_only=True)
class DistillParams:
    teacher: TeacherParams = param(help="who answers the prompts")
    prompts: DataRef = param(help="JSONL prompts: {id, prompt} rows (intent optional) or conversations "
                                  "ending with the user's turn ({\"messages\": [...]})", columns=PROMPTS)
    student: StudentParams = field(default_factory=lambda: StudentParams(size="student"),
                                   metadata={"help": "who learns the answers"})
    generation: GenerationParams = field(default_factory=GenerationParams,
                                         metadata={"help": "how the teacher generates"})
    training: TrainingParams = field(default_factory=TrainingParams,
                                     metadata={"help": "how the student trains"})
    kd: KDParams | None = param(None, "also match the teacher's logits (local teacher, same tokenizer)")
    validator: Literal["none", "json", "support"] = param(
        "none", "checks on top of empty, cut off and too long: json (the answer must parse as "
                "JSON), support (one of the bundled task's reply forms), none")
    max_answer_chars: int = param(400, "longer answers are dropped")
    min_success_ratio: float = param(0.9, "stop if fewer answers than this share are usable")

    def __post_init__(self) -> None:
        if self.kd is not None and self.teacher.kind != "local":
            raise ParamError("kd", "logit distillation needs a local teacher (an endpoint gives no logits)")
        if self.student.size is not None and self.teacher.kind != "local":
            raise ParamError("student.size", "a fresh student is built on the teacher's tokenizer, which "
                                             "an endpoint doesn't have; give student.model (e.g. from "
                                             "init_model)")
        if not 0 <= self.min_success_ratio <= 1:
            raise ParamError("min_success_ratio", f"must be in [0, 1], got {self.min_success_ratio!r}")
        if self.max_answer_chars < 1:
            raise ParamError("max_answer_chars", f"must be >= 1, got {self.max_answer_chars}")


class Distill(Step):
    name = "distill"
    summary = "label prompts with a teacher, then train a student on the answers (optionally logit KD)"
    Params = DistillParams
    outputs = {"model": "model", "labelled": "data"}
    kept_across_changes = ("labelled.partial.jsonl",)  # synth.partial_path: keyed by teacher and prompt

    @classmethod
    def references(cls, params: DistillParams) -> Iterator[tuple[str, Any, str]]:
        yield from super().references(params)
        if params.teacher.kind == "local":  # for an endpoint, model is a name, not a reference
            yield "teacher.model", ModelRef, params.teacher.model

    def run(self, ctx: StepContext, params: DistillParams) -> dict[str, Path]:
        from controller.pipeline.chatdata import read_conversations

        prompts_path = ctx.data(params.prompts)
        prompts, chat_input = teacher_prompts(prompts_path)  # bad lines fail before any work
        teacher_model = ctx.model(params.teacher.model) if params.teacher.kind == "local" else None
        student = self._student(ctx, params, teacher_model)
        teacher_dir = None
        if params.kd is not None:  # a tokenizer mismatch fails now, before the teacher is asked
            from controller.pipeline.train import check_same_tokenizer

            assert teacher_model is not None
            if teacher_model.path is None or student.path is None:
                raise StepError("kd needs both models' files on disk; a hub model can't be used for kd")
            check_same_tokenizer(student.path, teacher_model.path)
            teacher_dir = teacher_model.path

        labelled = ctx.dir / "labelled.jsonl"
        identity = self._label(ctx, params, prompts, labelled, teacher_model)
        if chat_input:  # the labelled data in the format it came in: the answer as the assistant turn
            as_chat_rows(labelled)
        examples = read_conversations(labelled) if labelled.stat().st_size else []
        if not examples:
            raise StepError(f"the teacher gave no usable answer for {prompts_path}")
        out = ctx.dir / "model"
        teacher_lineage = teacher_model.lineage() if teacher_model else {}
        ctx.info["train"] = run_training(ctx, student.path or student.source, examples, out, params.training,
                                         kind="distilled", teacher_dir=teacher_dir, kd=params.kd,
                                         meta={"base_ref": student.ref or None,
                                               "teacher_ref": teacher_lineage.get("ref"),
                                               "teacher_identity": identity})
        ctx.lineage["model"] = {
            "kind": "distilled",
            "teacher": {**teacher_lineage, "identity": identity},
            "base": student.lineage() if student.ref else {"ref": None, "size": params.student.size,
                                                           "tokenizer": teacher_lineage},
            "data": {data_name(params.prompts): file_sha256(prompts_path),
                     f"{ctx.spec.id}.labelled": file_sha256(labelled)},
            "synth": ctx.info.get("synth"),
            "train": ctx.info["train"],
        }
        ctx.lineage["labelled"] = {"kind": "data", "teacher": {**teacher_lineage, "identity": identity}}
        return {"model": out, "labelled": labelled}

    def _label(self, ctx: StepContext, params: DistillParams, prompts: list[dict[str, Any]],
               labelled: Path, teacher_model: ResolvedModel | None) -> dict[str, Any]:
        import json

        from controller.pipeline.synth import label_prompts
        from controller.pipeline.teachers import GenerationSettings, make_teacher

        meta_path = labelled.with_name(labelled.name + ".meta.json")
        if labelled.is_file() and meta_path.is_file():
            ctx.events.log(f"{ctx.task('label')}: reusing the {labelled.name} labelled before")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            ctx.info["synth"] = meta.get("counts")
            return meta.get("teacher", {})
        teacher = make_teacher(params.teacher.spec(teacher_model.source if teacher_model else "", ctx.device))
        g = params.generation
        settings = GenerationSettings(max_new_tokens=g.max_new_tokens, temperature=g.temperature,
                                      top_p=g.top_p, batch_size=g.batch_size, seed=ctx.seed)
        validator = validators.named(params.validator)
        report = label_prompts(teacher, prompts, labelled, settings, ctx.events,
                               max_answer_chars=params.max_answer_chars, validator=validator,
                               min_success_ratio=params.min_success_ratio)
        ctx.info["synth"] = {"asked": report.asked, "reused": report.reused, "kept": report.kept,
                             "dropped": dict(report.dropped)}
        return teacher.identity()

    def _student(self, ctx: StepContext, params: DistillParams,
                 teacher_model: ResolvedModel | None) -> ResolvedModel:
        if params.student.model is not None:
            return ctx.model(params.student.model)
        from controller.pipeline.modelkit import build_model

        assert teacher_model is not None and params.student.size is not None
        if teacher_model.path is None:
            raise StepError("student.size builds on the teacher's tokenizer files, which a hub teacher "
                            "doesn't have here; build the student with init_model and give student.model")
        init = ctx.dir / "student_init"
        if not (init / "config.json").is_file():
            build_model(params.student.size, teacher_model.path, init, seed=ctx.seed)
        return ResolvedModel(ref="", source=str(init), path=init, kind="model")


def teacher_prompts(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The prompts of a prompts file as the teacher takes them ({id, prompt, intent?}, plus
    "messages" for a conversation with a system message or earlier turns, which the teacher is
    sent whole; "prompt" is then its last user turn) and whether the labelled data is to be
    written as conversations. Rows without an id are named by their line."""
    from controller.pipeline.chatdata import read_prompts
    from controller.pipeline.jsonl import DataError

    rows = read_prompts(path)
    chat_input = any(r.chat or len(r.messages) > 1 for r in rows)
    prompts: list[dict[str, Any]] = []
    for row in rows:
        ident = row.extra.get("id")
        if not isinstance(ident, str) or not ident.strip():
            if "id" in row.extra:
                raise DataError(f"{row.where}: id: must be a non-empty string, got {ident!r}")
            ident = "line-" + row.where.rsplit(":", 1)[-1]
        prompt: dict[str, Any] = {"id": ident, "prompt": row.messages[-1]["content"]}
        if len(row.messages) > 1:  # a lone user turn is asked as a plain prompt, as it always was
            prompt["messages"] = [dict(m) for m in row.messages]
        if isinstance(row.extra.get("intent"), str):
            prompt["intent"] = row.extra["intent"]
        prompts.append(prompt)
    return prompts, chat_input


def as_chat_rows(labelled: Path) -> None:
    """Rewrite labelled {id, intent, prompt, answer, messages?, ...} rows as conversations
    (atomically): the messages asked (system message and earlier turns as given, weights
    included) or the prompt as the user's turn, then the teacher's answer as the assistant's."""
    from controller.pipeline.jsonl import read_jsonl, write_jsonl

    rows = read_jsonl(labelled)
    if all("answer" not in r for r in rows):
        return  # already conversations
    write_jsonl(labelled, [{**{k: v for k, v in r.items() if k not in ("prompt", "answer", "messages")},
                            "messages": [*(r.get("messages") or [{"role": "user", "content": r["prompt"]}]),
                                         {"role": "assistant", "content": r["answer"]}]}
                           for r in rows])
