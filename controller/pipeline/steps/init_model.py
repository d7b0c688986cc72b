"""init_model: a freshly initialised Llama of a named size (or a dict of its shape), on a
tokenizer trained on a data file's texts or taken from another model; or a smaller student cut
from a pretrained teacher (``from_teacher``: the teacher's architecture, tokenizer and weights,
with only some of its decoder layers).

Output: ``model`` (a Hugging Face model directory, slmops.json kind "base").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.refs import AnyModelRef, DataRef, ModelRef
from controller.pipeline.steps.base import Step, StepContext, StepError
from controller.pipeline.steps.params import ParamError, param
from controller.pipeline.steps.training import data_name


def check_size(field: str, size: str | dict[str, int | str]) -> None:
    """A named size or a shape mapping, checked now rather than when the model is built."""
    from controller.pipeline.modelkit import ModelError, resolve_size

    try:
        resolve_size(size)
    except ModelError as e:
        raise ParamError(field, str(e).removeprefix("model size: ")) from None


@dataclass(frozen=True, kw_only=True)
class InitModelParams:
    size: str | dict[str, int | str] = param("student", "a named size (teacher, student, tiny) or "
                                             "a mapping of hidden_size, num_layers, ... (base: NAME "
                                             "takes the rest from a named size)")
    tokenizer_from: DataRef | None = param(None, "train a byte-level BPE tokenizer on this data "
                                                 "file's prompts and answers", columns=("prompt",))
    tokenizer_model: ModelRef | None = param(None, "reuse this model's tokenizer instead")
    vocab_size: int = param(2048, "largest tokenizer vocabulary (with tokenizer_from); a text with few "
                                  "distinct words fills fewer")
    from_teacher: AnyModelRef | None = param(None, "cut the student from this pretrained model instead: "
                                                   "its architecture, tokenizer and weights, with "
                                                   "only some of its layers (size and the "
                                                   "tokenizer parameters are then not used)")
    keep_every: int = param(2, "with from_teacher: keep layers 0, k, 2k, ... and the last")
    layers: list[int] = param(help="with from_teacher: exactly these teacher layers (0-based) "
                                  "instead of keep_every", factory=list)

    def __post_init__(self) -> None:
        if self.keep_every < 1:
            raise ParamError("keep_every", f"must be at least 1, got {self.keep_every}")
        if self.from_teacher is not None:
            if self.tokenizer_from is not None or self.tokenizer_model is not None:
                raise ParamError("from_teacher", "a student cut from a teacher keeps the teacher's "
                                                 "tokenizer: drop tokenizer_from / tokenizer_model")
            return
        if self.layers:
            raise ParamError("layers", "layers go with from_teacher")
        if (self.tokenizer_from is None) == (self.tokenizer_model is None):
            raise ParamError("tokenizer_from", "give exactly one of tokenizer_from (a data file) "
                                               "or tokenizer_model (a model reference)")
        if self.vocab_size < 261:
            raise ParamError("vocab_size", f"must be at least 261 (256 bytes + 5 special tokens), "
                                           f"got {self.vocab_size}")
        check_size("size", self.size)


class InitModel(Step):
    name = "init_model"
    summary = ("build a randomly initialised Llama on a trained or borrowed tokenizer, or cut a "
               "smaller student from a pretrained teacher")
    Params = InitModelParams
    outputs = {"model": "model"}

    def run(self, ctx: StepContext, params: InitModelParams) -> dict[str, Path]:
        if params.from_teacher is not None:
            return _from_teacher(ctx, params, params.from_teacher)
        from controller.pipeline.jsonl import read_jsonl
        from controller.pipeline.modelkit import build_model, train_tokenizer

        lineage: dict[str, object] = {"kind": "base", "size": params.size}
        if params.tokenizer_from is not None:
            tokenizer_dir = ctx.dir / "tokenizer"
            path = ctx.data(params.tokenizer_from)
            if not (tokenizer_dir / "tokenizer.json").is_file():
                rows = read_jsonl(path, required=("prompt",))
                texts = [r["prompt"] for r in rows]
                texts += [r["answer"] for r in rows if isinstance(r.get("answer"), str)]
                ctx.events.log(f"{ctx.task()}: training a tokenizer of at most {params.vocab_size} tokens "
                               f"on {len(texts)} texts")
                train_tokenizer(texts, tokenizer_dir, vocab_size=params.vocab_size)
                ctx.events.log(f"{ctx.task()}: the tokenizer has {_vocab_size(tokenizer_dir)} tokens "
                               "(digits stay single, so small task texts fill fewer)")
            lineage["data"] = {data_name(params.tokenizer_from): file_sha256(path)}
        else:
            assert params.tokenizer_model is not None
            source = ctx.model(params.tokenizer_model)
            if source.kind != "model" or source.path is None:
                raise StepError(f"tokenizer_model {params.tokenizer_model!r}: a local model directory "
                                "is needed to borrow its tokenizer")
            tokenizer_dir = source.path
            lineage["tokenizer"] = source.lineage()
        out = ctx.dir / "model"
        if not (out / "config.json").is_file():
            build_model(params.size, tokenizer_dir, out, seed=ctx.seed)
        lineage["seed"] = ctx.seed
        ctx.lineage["model"] = lineage
        return {"model": out}


def _vocab_size(tokenizer_dir: Path) -> int:
    import json

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    return len(spec["model"]["vocab"]) + sum(1 for t in spec.get("added_tokens", [])
                                             if t["content"] not in spec["model"]["vocab"])


def _from_teacher(ctx: StepContext, params: InitModelParams, ref: str) -> dict[str, Path]:
    from controller.pipeline.modelkit import load_model
    from controller.pipeline.modelkit.shrink import every_kth, shrink

    out = ctx.dir / "model"
    teacher = ctx.model(ref)
    if not (out / "config.json").is_file():
        ctx.events.log(f"{ctx.task()}: loading the teacher {ref}")
        model, tokenizer = load_model(teacher.source, device="cpu", events=ctx.events)
        if teacher.kind == "adapter":
            model = model.merge_and_unload()  # the student starts from the adapted weights
        total = int(model.config.num_hidden_layers)
        keep = list(params.layers) or every_kth(total, params.keep_every)
        kept = shrink(model, tokenizer, keep, out)
        ctx.events.log(f"{ctx.task()}: student of {len(kept['kept_layers'])} of the teacher's "
                       f"{total} layers ({kept['kept_layers']}): {kept['student_params'] / 1e6:.1f} M of "
                       f"its {kept['teacher_params'] / 1e6:.1f} M parameters "
                       f"({kept['student_params'] / kept['teacher_params']:.0%})")
        ctx.info["kept_layers"] = kept["kept_layers"]
    ctx.lineage["model"] = {"kind": "base", "from_teacher": teacher.lineage(),
                            "kept_layers": ctx.info.get("kept_layers") or list(params.layers)
                            or f"every {params.keep_every}"}
    return {"model": out}
