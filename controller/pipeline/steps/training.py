"""Training parameters shared by the distill and finetune steps, and the one way both train:
resumable (``train()`` resumes from its checkpoint in the same work dir) and done once (a
finished training leaves its result beside the model, and a rerun reuses it)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.jsonl import write_atomic
from controller.pipeline.steps.base import StepContext
from controller.pipeline.steps.params import ParamError, param

ALL_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _positive(name: str, value: float, *, zero_ok: bool = False) -> None:
    if value < 0 or (value == 0 and not zero_ok):
        raise ParamError(name, f"must be {'>= 0' if zero_ok else '> 0'}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class TrainingParams:
    learning_rate: float = param(3e-3, "peak learning rate, in (0, 1] (AdamW; linear warmup, then decay)")
    batch_size: int = param(32, "examples per optimizer step")
    epochs: float = param(1.0, "passes over the data (ignored when max_steps > 0)")
    max_steps: int = param(0, "optimizer steps to run; 0 = from epochs")
    max_length: int = param(128, "tokens per example; a longer conversation is cut from the left, "
                                 "keeping its last assistant turn whole (refused if even that is longer)")
    warmup_ratio: float = param(0.05, "share of the steps spent warming the learning rate up")
    weight_decay: float = param(0.0, "AdamW weight decay")
    checkpoint_every: int = param(200, "steps between checkpoints (a rerun resumes from the last); "
                                       "0 = only at the end")
    log_every: int = param(10, "steps between progress events")
    max_grad_norm: float = param(1.0, "gradient clipping norm (0 = no clipping)")

    def __post_init__(self) -> None:
        _positive("learning_rate", self.learning_rate)
        if self.learning_rate > 1:
            raise ParamError("learning_rate", f"must be at most 1, got {self.learning_rate!r}")
        _positive("batch_size", self.batch_size)
        _positive("epochs", self.epochs)
        _positive("max_steps", self.max_steps, zero_ok=True)
        if self.max_length < 8:
            raise ParamError("max_length", f"must be at least 8, got {self.max_length}")
        if not 0 <= self.warmup_ratio < 1:
            raise ParamError("warmup_ratio", f"must be in [0, 1), got {self.warmup_ratio!r}")
        _positive("weight_decay", self.weight_decay, zero_ok=True)
        _positive("checkpoint_every", self.checkpoint_every, zero_ok=True)
        _positive("log_every", self.log_every)
        _positive("max_grad_norm", self.max_grad_norm, zero_ok=True)

    def settings(self, seed: int) -> Any:
        from controller.pipeline.train import TrainSettings

        return TrainSettings(learning_rate=self.learning_rate, batch_size=self.batch_size,
                             epochs=self.epochs, max_steps=self.max_steps, max_length=self.max_length,
                             seed=seed, warmup_ratio=self.warmup_ratio, weight_decay=self.weight_decay,
                             checkpoint_every=self.checkpoint_every, log_every=self.log_every,
                             max_grad_norm=self.max_grad_norm)


@dataclass(frozen=True, kw_only=True)
class LoraParams:
    r: int = param(8, "rank of the LoRA update matrices")
    alpha: int = param(16, "LoRA scaling numerator (the update is scaled by alpha / r)")
    dropout: float = param(0.05, "dropout on the LoRA input")
    target_modules: tuple[str, ...] = param(ALL_PROJECTIONS, "names of the linear modules to adapt; "
                                            "all projections learn a new intent far better than q/k/v/o")
    qlora: bool = param(False, "load the base in 4 bits (needs CUDA and bitsandbytes)")

    def __post_init__(self) -> None:
        _positive("r", self.r)
        _positive("alpha", self.alpha)
        if not 0 <= self.dropout < 1:
            raise ParamError("dropout", f"must be in [0, 1), got {self.dropout!r}")
        if not self.target_modules or any(not m.strip() for m in self.target_modules):
            raise ParamError("target_modules", "expected a non-empty list of module names, "
                                               "e.g. [q_proj, v_proj]")

    def settings(self) -> Any:
        from controller.pipeline.train import LoraSettings

        return LoraSettings(r=self.r, alpha=self.alpha, dropout=self.dropout,
                            target_modules=tuple(self.target_modules), qlora=self.qlora)


@dataclass(frozen=True, kw_only=True)
class KDParams:
    temperature: float = param(2.0, "softmax temperature of the KL term")
    alpha: float = param(0.5, "weight of the KL term; 1 - alpha weighs the cross-entropy on the answers")

    def __post_init__(self) -> None:
        _positive("temperature", self.temperature)
        if not 0 <= self.alpha <= 1:
            raise ParamError("alpha", f"must be in [0, 1], got {self.alpha!r}")

    def settings(self) -> Any:
        from controller.pipeline.train import KDSettings

        return KDSettings(temperature=self.temperature, alpha=self.alpha)


def check_qlora_possible(lora: LoraParams | None, device: str) -> None:
    """QLoRA needs CUDA and bitsandbytes; say so before anything runs rather than hours in."""
    if lora is None or not lora.qlora:
        return
    import importlib.util

    import torch

    from controller.pipeline.steps.base import StepError

    missing = [what for what, ok in (("CUDA", torch.cuda.is_available() and device != "cpu"),
                                     ("bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None))
               if not ok]
    if missing:
        raise StepError(f"lora.qlora needs {' and '.join(missing)}, which this host lacks; set "
                        "qlora: false to train a plain LoRA adapter")


def run_training(ctx: StepContext, model_source: Path | str, examples: Sequence[Any], out_dir: Path,
                 training: TrainingParams, *, kind: str, meta: Mapping[str, Any], part: str = "train",
                 teacher_dir: Path | None = None, kd: KDParams | None = None,
                 lora: LoraParams | None = None) -> dict[str, Any]:
    """Train ``model_source`` (a directory, or a hub id as a str: never made a Path) on
    ``examples`` (chat or prompt/answer rows) into ``out_dir`` (slmops.json ``kind``, plus
    ``meta``) with checkpoints in ``ctx.dir/<part>``; skipped when this step finished it before."""
    from controller.pipeline.train import train

    done_file = ctx.dir / f"{part}.result.json"
    if out_dir.is_dir() and done_file.is_file():
        ctx.events.log(f"{ctx.task(part)}: already trained, reusing {out_dir.name}")
        return json.loads(done_file.read_text(encoding="utf-8"))
    result = train(model_source, examples, out_dir, work_dir=ctx.dir / part,
                   settings=training.settings(ctx.seed), events=ctx.events, teacher_dir=teacher_dir,
                   kd=kd.settings() if kd else None, lora=lora.settings() if lora else None,
                   device=ctx.device, task=ctx.task(part), kind=kind, meta=meta)
    summary = {"steps": result.steps, "final_loss": result.final_loss, "seconds": round(result.seconds, 2),
               "resumed_from_step": result.resumed_from_step, "examples": result.examples,
               "trained_tokens": result.trained_tokens}
    if result.resumed_from_step:
        ctx.events.log(f"{ctx.task(part)}: resumed from the checkpoint at step {result.resumed_from_step}")
    write_atomic(done_file, json.dumps(summary).encode("utf-8"))
    return summary


def data_name(ref: str) -> str:
    """How lineage names a data reference: "data.train" for ${data.train}, else the path."""
    return ref[2:-1] if ref.startswith("${") else ref
