"""finetune: train a model on gold data, fully or with a LoRA adapter.

Outputs: ``model`` (method full: the fine-tuned model; method lora with merge: the base with the
adapter merged in) and ``adapter`` (method lora: the adapter alone, a small separate artifact
that names its base). Several finetune steps on one base give several separate adapters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from controller.pipeline.chatdata import CONVERSATIONS
from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.refs import DataRef, ModelRef
from controller.pipeline.steps.base import Step, StepContext
from controller.pipeline.steps.params import ParamError, param
from controller.pipeline.steps.training import (
    LoraParams,
    TrainingParams,
    check_qlora_possible,
    data_name,
    run_training,
)


@dataclass(frozen=True, kw_only=True)
class FinetuneParams:
    model: ModelRef = param(help="the model to tune (an earlier step's output, registry:NAME, hf:ID, "
                                 "or, with --local, a path)")
    data: DataRef = param(help="JSONL conversations ({\"messages\": [...]}, the OpenAI fine-tuning "
                               "format) or {prompt, answer} rows; the loss is on assistant turns only",
                          columns=CONVERSATIONS)
    method: Literal["full", "lora"] = param("full", "full: update every weight; lora: train a "
                                                    "small adapter and keep the base as it is")
    training: TrainingParams = field(default_factory=TrainingParams, metadata={"help": "optimizer settings"})
    lora: LoraParams | None = param(None, "LoRA settings (method lora; defaults when left out)")
    merge: bool = param(False, "method lora: also output the base with the adapter merged in")

    def __post_init__(self) -> None:
        if self.method == "full" and self.lora is not None:
            raise ParamError("lora", "only for method: lora (this step has method: full)")
        if self.method == "full" and self.merge:
            raise ParamError("merge", "only for method: lora (a full fine-tune is already one model)")
        if self.method == "lora" and self.lora is None:
            object.__setattr__(self, "lora", LoraParams())


class Finetune(Step):
    name = "finetune"
    summary = "fine-tune a model on gold data: full, or a LoRA adapter (optionally merged)"
    Params = FinetuneParams
    outputs = {"model": "model", "adapter": "adapter"}

    @classmethod
    def declared_outputs(cls, params: FinetuneParams) -> Mapping[str, str]:
        if params.method == "full":
            return {"model": "model"}
        return {"adapter": "adapter", "model": "model"} if params.merge else {"adapter": "adapter"}

    @classmethod
    def preflight(cls, params: FinetuneParams, device: str) -> None:
        check_qlora_possible(params.lora, device)

    def run(self, ctx: StepContext, params: FinetuneParams) -> dict[str, Path]:
        from controller.pipeline.chatdata import read_conversations

        base = ctx.model(params.model)
        data_path = ctx.data(params.data)
        examples = read_conversations(data_path)
        lineage: dict[str, Any] = {"base": base.lineage(),
                                   "data": {data_name(params.data): file_sha256(data_path)},
                                   "teacher": self._inherited_teacher(ctx, params.model)}
        if params.method == "full":
            out = ctx.dir / "model"
            ctx.info["train"] = run_training(ctx, base.path or base.source, examples, out, params.training,
                                             kind="finetuned", meta={"base_ref": base.ref})
            ctx.lineage["model"] = {"kind": "finetuned", **lineage, "train": ctx.info["train"]}
            return {"model": out}

        assert params.lora is not None
        adapter = ctx.dir / "adapter"
        # With lora, train() writes slmops.json kind "adapter" whatever ``kind`` says.
        ctx.info["train"] = run_training(ctx, base.path or base.source, examples, adapter, params.training,
                                         kind="finetuned", meta={"base_ref": base.ref}, lora=params.lora)
        ctx.bases["adapter"] = base.source
        ctx.lineage["adapter"] = {"kind": "adapter", **lineage, "train": ctx.info["train"]}
        outputs = {"adapter": adapter}
        if params.merge:
            from controller.pipeline.train import merge_adapter

            merged = ctx.dir / "model"
            if not (merged / "config.json").is_file():
                ctx.events.log(f"{ctx.task()}: merging the adapter into its base")
                merge_adapter(base.path or base.source, adapter, merged)  # a hub id stays a str
            ctx.lineage["model"] = {"kind": "finetuned", "merged_adapter": True, **lineage,
                                    "train": ctx.info["train"]}
            outputs["model"] = merged
        return outputs

    @staticmethod
    def _inherited_teacher(ctx: StepContext, model_ref: str) -> Any:
        """A fine-tuned student keeps its teacher in its lineage."""
        from controller.pipeline.refs import StepRef, parse_model_ref

        parsed = parse_model_ref(model_ref)
        if isinstance(parsed, StepRef):
            return ctx.done[parsed.step].lineage.get(parsed.output, {}).get("teacher")
        return None
