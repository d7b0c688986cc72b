"""evaluate: measure models (or LoRA adapters on their base) on a gold data file.

Each model is evaluated in a fresh process (``evaluate_isolated``), so its peak memory is its
own: the chosen metrics (``metrics: [exact_match, exact_match_relaxed, rouge_l, bleu, chrf,
perplexity, judge]``, default exact_match and rouge_l; per intent for rows with intents),
latency p50/p95, tokens/s, parameters, size on disk. ``judge`` needs ``judge: {base_url, model,
api_key_env, rubric}``. Data: prompt/answer rows, chat rows ({messages}: the last assistant turn
is the reference) or text rows ({text}, perplexity only). Models already measured by an
interrupted run are not measured again.

Output: ``metrics`` — ``metrics.json``: {"data": {name: sha256}, "models": [{"ref", "metrics"}]}.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import file_sha256
from controller.pipeline.refs import AnyModelRef, DataRef
from controller.pipeline.steps.base import Step, StepContext
from controller.pipeline.steps.params import ParamError, param
from controller.pipeline.steps.training import data_name


@dataclass(frozen=True, kw_only=True)
class EvaluateParams:
    models: list[AnyModelRef] = param(help="the models to measure; an adapter is measured on its base")
    data: DataRef = param(help="JSONL rows: prompt/answer rows, chat rows ({messages}) or text rows ({text})")
    metrics: list[str] = param(factory=lambda: ["exact_match", "rouge_l"],
                               help="what to measure: exact_match, exact_match_relaxed, rouge_l, bleu, chrf, "
                                    "perplexity, judge")
    judge: dict[str, Any] | None = param(None, "the judge endpoint for the judge metric: {base_url, model, "
                                               "api_key_env, rubric}")
    max_new_tokens: int = param(64, "longest answer generated")
    batch_size: int = param(32, "prompts per batch for the accuracy pass")
    latency_samples: int = param(50, "answers generated one at a time to time latency and tokens/s")

    def __post_init__(self) -> None:
        if not self.models:
            raise ParamError("models", "expected at least one model")
        seen: set[str] = set()
        for i, ref in enumerate(self.models):
            if ref in seen:
                raise ParamError(f"models[{i}]", f"{ref} is listed twice")
            seen.add(ref)
        for name in ("max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ParamError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.latency_samples < 0:
            raise ParamError("latency_samples", f"must be >= 0, got {self.latency_samples}")
        from controller.pipeline.evaluate.judge import JudgeConfig, JudgeError
        from controller.pipeline.evaluate.metrics import check_metrics

        try:
            check_metrics(self.metrics)
        except ValueError as e:
            field, _, problem = str(e).partition(": ")
            raise ParamError(field, problem) from None
        if "judge" in self.metrics and self.judge is None:
            raise ParamError("judge", "the judge metric needs {base_url, model, api_key_env, rubric}")
        if self.judge is not None:
            try:
                JudgeConfig.from_dict(self.judge)
            except JudgeError as e:
                field, _, problem = str(e).partition(": ")
                raise ParamError(field, problem) from None


class Evaluate(Step):
    name = "evaluate"
    summary = "measure accuracy (overall, per intent), latency, throughput, memory and size"
    Params = EvaluateParams
    outputs = {"metrics": "metrics"}

    def run(self, ctx: StepContext, params: EvaluateParams) -> dict[str, Path]:
        from controller.pipeline.evaluate import evaluate_isolated
        from controller.pipeline.evaluate.rows import read_rows
        from controller.pipeline.jsonl import write_atomic

        rows_path = ctx.data(params.data)
        read_rows(rows_path)  # a bad row fails here, by number
        data = {data_name(params.data): file_sha256(rows_path)}
        results: list[dict[str, Any]] = []
        for i, ref in enumerate(params.models):
            done = ctx.dir / "models" / f"{i}.json"
            if done.is_file():
                metrics = json.loads(done.read_text(encoding="utf-8"))["metrics"]
            else:
                model = ctx.model(ref)
                ctx.events.log(f"{ctx.task()}: measuring {ref} on {data_name(params.data)}")
                if model.kind == "adapter":
                    assert model.base is not None
                    source, adapter = model.base.source, model.path
                else:
                    source, adapter = model.source, None
                metrics = evaluate_isolated(source, rows_path, adapter_dir=adapter,
                                            max_new_tokens=params.max_new_tokens,
                                            batch_size=params.batch_size,
                                            latency_samples=params.latency_samples, device=ctx.device,
                                            events=ctx.events, metrics=list(params.metrics),
                                            judge=params.judge)
                metrics["data"] = data
                write_atomic(done, json.dumps({"ref": ref, "metrics": metrics}).encode("utf-8"))
            ctx.events.log(f"{ctx.task()}: {ref}: {summary_line(metrics)}")
            results.append({"ref": ref, "metrics": metrics})
        out = ctx.dir / "metrics.json"
        write_atomic(out, (json.dumps({"data": data, "models": results}, indent=2) + "\n").encode("utf-8"))
        return {"metrics": out}


def summary_line(metrics: dict[str, Any]) -> str:
    parts = [f"{metrics.get('n', '?')} rows:"]
    for name in metrics.get("metrics") or ["exact_match"]:
        value = metrics.get(name)
        if isinstance(value, int | float):
            parts.append(f"{name} {value:.1%}" if name.startswith("exact_match") else f"{name} {value:.3f}")
    per_intent = metrics.get("per_intent") or {}
    if per_intent:
        shares = (f"{k} {v.get('exact_match', 0):.0%}" for k, v in sorted(per_intent.items()))
        parts.append("(" + ", ".join(shares) + ")")
    latency = metrics.get("latency_ms") or {}
    if latency:
        parts.append(f"p50 {latency.get('p50', 0):.1f} ms")
    if metrics.get("tokens_per_s"):
        parts.append(f"{metrics['tokens_per_s']:.0f} tok/s")
    return " ".join(parts)
