"""generate_task: the bundled customer-support task as JSONL splits.

Outputs (all data): ``train``, ``val``, ``test`` (gold rows of the base intents),
``new_intent_train`` / ``new_intent_test`` (the intent added later, for a LoRA adapter),
``test_all`` (test + new_intent_test: every intent) and ``distill_prompts`` (base-intent prompts
with no answers, disjoint from ``train``: what a teacher labels for a student).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from controller.pipeline.jsonl import write_jsonl
from controller.pipeline.steps.base import Step, StepContext
from controller.pipeline.steps.params import ParamError, param

OUTPUT_FILES = ("train", "val", "test", "new_intent_train", "new_intent_test", "test_all", "distill_prompts")


@dataclass(frozen=True, kw_only=True)
class GenerateTaskParams:
    task: Literal["support"] = param("support", "the bundled task (customer-support requests)")
    train: int = param(3000, "gold training rows, base intents")
    val: int = param(300, "validation rows, base intents")
    test: int = param(500, "test rows, base intents")
    new_intent_train: int = param(600, "training rows of the new intent(s)")
    new_intent_test: int = param(100, "test rows of the new intent(s)")
    replay: int = param(0, "base-intent gold rows mixed into new_intent_train, so a model tuned "
                           "on it keeps answering the old intents")
    distill_prompts: int = param(6000, "unlabelled base-intent prompts for a teacher to answer")

    def __post_init__(self) -> None:
        for name in ("train", "val", "test", "new_intent_train", "new_intent_test", "replay",
                     "distill_prompts"):
            value = getattr(self, name)
            if value < 0:
                raise ParamError(name, f"must be >= 0, got {value}")
        if self.replay > self.train:
            raise ParamError("replay", f"{self.replay} replayed rows come from train, which has {self.train}")


class GenerateTask(Step):
    name = "generate_task"
    summary = "write the bundled support task's seeded splits as JSONL"
    Params = GenerateTaskParams
    outputs = {name: "data" for name in OUTPUT_FILES}

    def run(self, ctx: StepContext, params: GenerateTaskParams) -> dict[str, Path]:
        from controller.pipeline.task import BASE_INTENTS, NEW_INTENTS, generate

        seed = ctx.seed
        # One draw for gold train and distill prompts, so the two never share a prompt.
        pool = generate("train", params.train + params.distill_prompts, seed=seed, intents=BASE_INTENTS)
        gold_train, prompts = pool[:params.train], pool[params.train:]
        new_train = generate("train", params.new_intent_train, seed=seed, intents=NEW_INTENTS)
        new_test = generate("test", params.new_intent_test, seed=seed, intents=NEW_INTENTS)
        test = generate("test", params.test, seed=seed, intents=BASE_INTENTS)
        # A seeded sample of the gold rows (a stride would pick one intent: they come in turn).
        replay = random.Random(f"replay:{seed}").sample(gold_train, params.replay)
        splits: dict[str, list[dict[str, Any]]] = {
            "train": _ids("train", gold_train),
            "val": _ids("val", generate("val", params.val, seed=seed, intents=BASE_INTENTS)),
            "test": _ids("test", test),
            "new_intent_train": _ids("new_intent_train", _interleave(new_train, replay)),
            "new_intent_test": _ids("new_intent_test", new_test),
            "test_all": _ids("test_all", test + new_test),
            "distill_prompts": [{"id": f"distill_prompts-{i:06d}", "intent": r["intent"],
                                 "prompt": r["prompt"]} for i, r in enumerate(prompts)],
        }
        out: dict[str, Path] = {}
        for name, rows in splits.items():
            out[name] = ctx.dir / f"{name}.jsonl"
            write_jsonl(out[name], rows)
        ctx.info["rows"] = {name: len(rows) for name, rows in splits.items()}
        ctx.events.log(f"{ctx.task()}: " + ", ".join(f"{n} {len(r)}" for n, r in splits.items()))
        return out


def _ids(name: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows renumbered per file, so ids stay unique when files are combined (test_all)."""
    return [{**row, "id": f"{name}-{i:06d}"} for i, row in enumerate(rows)]


def _interleave(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if not b:
        return list(a)
    out: list[dict[str, Any]] = []
    every = max(1, len(a) // len(b))
    rest = list(b)
    for i, row in enumerate(a):
        out.append(row)
        if rest and i % every == every - 1:
            out.append(rest.pop(0))
    return out + rest
