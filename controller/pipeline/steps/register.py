"""register: name the models this run made, for the registry.

It does not touch the registry: it describes each model (path, kind, parameters, size on disk,
the metrics of this run's evaluate steps, lineage), and the runner writes all of them to
``result.json`` once every step has succeeded. The controller registers from that file only
after the whole job succeeded, so a failed or cancelled job registers nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from controller.pipeline import refs
from controller.pipeline.refs import AnyModelRef
from controller.pipeline.steps.base import Step, StepContext, StepError
from controller.pipeline.steps.params import ParamError, param

# The registry's rule: lowercase, so two names never share a directory on a case-insensitive disk.
MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")


@dataclass(frozen=True, kw_only=True)
class RegisterParams:
    models: dict[str, AnyModelRef] = param(help="registry name → a model or adapter this recipe made "
                                                 "(${step.output}); each gets the next version of its name")

    def __post_init__(self) -> None:
        if not self.models:
            raise ParamError("models", "expected at least one NAME: ${step.output}")
        for name, ref in self.models.items():
            if not MODEL_NAME.match(name):
                raise ParamError(f"models.{name}", "a model name is 1-63 lowercase letters, digits, '.', "
                                                   "'_' or '-', starting with a letter or digit")
            if not isinstance(refs.parse_model_ref(ref), refs.StepRef):
                raise ParamError(f"models.{name}", f"{ref}: only models made by this recipe "
                                                   "(${step.output}) can be registered")


class Register(Step):
    name = "register"
    summary = "describe the models to register (the controller registers them once the job succeeded)"
    Params = RegisterParams
    outputs: ClassVar[Mapping[str, str]] = {}
    always_run = True

    def run(self, ctx: StepContext, params: RegisterParams) -> dict[str, Path]:
        from controller.pipeline.modelkit import dir_size, read_meta

        names_by_ref = {ref: name for name, ref in params.models.items()}
        metrics = self._metrics(ctx)
        entries: list[dict[str, Any]] = []
        for name, ref in params.models.items():
            parsed = refs.parse_model_ref(ref)
            assert isinstance(parsed, refs.StepRef)
            record = ctx.done[parsed.step]
            path = record.outputs[parsed.output]
            if not path.is_dir():
                raise StepError(f"models.{name}: {ref} ({path}) is missing; rerun step {parsed.step!r}")
            meta = read_meta(path)
            lineage = dict(record.lineage.get(parsed.output, {}))
            kind = lineage.pop("kind", None) or meta.get("kind") or record.kinds[parsed.output]
            for key in ("teacher", "base"):  # point at entries of this same result where possible
                link = lineage.get(key)
                if isinstance(link, dict) and link.get("ref") in names_by_ref:
                    lineage[key] = {**link, "entry": names_by_ref[link["ref"]]}
            entry: dict[str, Any] = {
                "name": name,
                "kind": kind,
                "path": str(path.resolve()),
                "params": meta.get("params"),
                "size_bytes": dir_size(path),
                "metrics": metrics.get(ref),
                "lineage": {"recipe": ctx.recipe.name, "recipe_sha256": ctx.recipe.sha256,
                            "step": parsed.step, "output": parsed.output, **lineage},
            }
            base = lineage.get("base")
            if kind == "adapter" and isinstance(base, dict) and base.get("entry"):
                entry["base_entry"] = base["entry"]
            entries.append(entry)
        ctx.info["register"] = entries
        ctx.events.log(f"{ctx.task()}: {len(entries)} model(s) to register once the run succeeds: "
                       + ", ".join(e["name"] for e in entries))
        return {}

    @staticmethod
    def _metrics(ctx: StepContext) -> dict[str, dict[str, Any]]:
        """ref → metrics from the evaluate steps that ran before this one (the last one wins)."""
        found: dict[str, dict[str, Any]] = {}
        for record in ctx.done.values():
            if record.uses != "evaluate" or "metrics" not in record.outputs:
                continue
            report = json.loads(record.outputs["metrics"].read_text(encoding="utf-8"))
            for item in report.get("models", []):
                found[item["ref"]] = {**item["metrics"], "eval_step": record.step}
        return found
