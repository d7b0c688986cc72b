"""Distillation report: the demo recipe end to end, once per seed, and the issue's targets.

For each seed the recipe (``recipes/support-demo.yaml`` by default) runs in this process on a
fresh data dir, exactly as ``slmops run --local`` runs it, and is timed from the first step to
the registration. The figures come from what the recipe's evaluate steps measured (the same
PyTorch harness for teacher and student, each in a fresh process so peak memory is its own):

- the student's parameters as a share of the teacher's (target <= 20 %);
- retention: the student's exact match over the teacher's, on the base intents (target >= 95 %);
- speed: the teacher's p50 latency per answer over the student's (target >= 3x);
- the whole recipe's wall time (target <= 15 min);

each with its mean and its spread (min..max) over the seeds.

    .venv/bin/python -m bench.distill_report --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from controller.pipeline.local import run_local
from controller.pipeline.rich_events import RichEvents

REPO = Path(__file__).resolve().parent.parent
TARGETS = {"param_share": ("<=", 0.20), "retention": (">=", 0.95), "speedup": (">=", 3.0),
           "minutes": ("<=", 15.0)}


def run_seed(recipe_path: Path, seed: int, keep: bool) -> dict[str, Any]:
    """Run the recipe with ``seed``; return the registered models' metrics and the wall time."""
    spec = yaml.safe_load(recipe_path.read_text())
    spec["seed"] = seed
    spec["name"] = f"{spec['name']}-seed{seed}"
    root = Path(tempfile.mkdtemp(prefix=f"slmops-distill-{seed}-"))
    seeded = recipe_path.parent / f".{recipe_path.stem}-seed{seed}.yaml"  # beside it: relative paths hold
    seeded.write_text(yaml.safe_dump(spec, sort_keys=False))
    try:
        start = time.perf_counter()
        with RichEvents() as events:
            records = run_local(seeded, root / "data", None, events)
        seconds = time.perf_counter() - start
    finally:
        seeded.unlink(missing_ok=True)
    models = {r.name: {"kind": r.kind, "params": r.params, "size_bytes": r.size_bytes,
                       "metrics": r.metrics} for r in records}
    if not keep:
        import shutil
        shutil.rmtree(root, ignore_errors=True)
    return {"seed": seed, "seconds": seconds, "models": models, "data_dir": str(root) if keep else None}


def figures(run: dict[str, Any], teacher: str, student: str) -> dict[str, float]:
    t, s = run["models"][teacher], run["models"][student]
    tm, sm = t["metrics"], s["metrics"]
    return {
        "teacher_params": t["params"], "student_params": s["params"],
        "param_share": s["params"] / t["params"],
        "teacher_em": tm["exact_match"], "student_em": sm["exact_match"],
        "retention": sm["exact_match"] / tm["exact_match"] if tm["exact_match"] else 0.0,
        "teacher_p50_ms": tm["latency_ms"]["p50"], "student_p50_ms": sm["latency_ms"]["p50"],
        "speedup": tm["latency_ms"]["p50"] / sm["latency_ms"]["p50"],
        "teacher_tok_s": tm["tokens_per_s"], "student_tok_s": sm["tokens_per_s"],
        "teacher_peak_mb": tm.get("peak_memory_bytes", 0) / 2**20,
        "student_peak_mb": sm.get("peak_memory_bytes", 0) / 2**20,
        "minutes": run["seconds"] / 60,
    }


def spread(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.3g} ({min(values):.3g}..{max(values):.3g})" if len(values) > 1 else f"{mean:.3g}"


def met(name: str, values: list[float]) -> str:
    op, bound = TARGETS[name]
    ok = all(v <= bound for v in values) if op == "<=" else all(v >= bound for v in values)
    return f"{op} {bound:g}: {'met on every seed' if ok else 'NOT met on every seed'}"


def report(runs: list[dict[str, Any]], recipe: Path, teacher: str, student: str, adapter: str) -> str:
    rows = [figures(r, teacher, student) for r in runs]
    col = {k: [r[k] for r in rows] for k in rows[0]}

    def row(label: str, teacher_key: str | None, student_key: str | None, target: str = "") -> str:
        cells = [spread(col[k]) if k else "" for k in (teacher_key, student_key)]
        return f"| {label} | {cells[0]} | {cells[1]} | {met(target, col[target]) if target else ''} |"

    lines = [
        f"### Run of {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        "",
        f"Machine: {platform.machine()}, {_cpu_count()} CPUs, Python {platform.python_version()}; "
        f"recipe `{recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe}`, "
        f"seeds {', '.join(str(r['seed']) for r in runs)}. Mean (min..max) over the seeds.",
        "",
        "| figure | teacher | student | target |",
        "|---|---|---|---|",
        row("parameters", "teacher_params", "student_params"),
        row("student / teacher parameters", None, "param_share", "param_share"),
        row("exact match (base intents)", "teacher_em", "student_em"),
        row("retention of the teacher's exact match", None, "retention", "retention"),
        row("p50 latency per answer, ms", "teacher_p50_ms", "student_p50_ms"),
        row("speed-up (teacher p50 / student p50)", None, "speedup", "speedup"),
        row("tokens/s (batch 1)", "teacher_tok_s", "student_tok_s"),
        row("peak memory of the eval process, MB", "teacher_peak_mb", "student_peak_mb"),
        row("whole recipe, minutes", "minutes", None, "minutes"),
    ]
    adapters = [r["models"].get(adapter) for r in runs]
    if all(adapters):
        em = [a["metrics"]["exact_match"] for a in adapters]
        per = [a["metrics"].get("per_intent", {}) for a in adapters]
        new = [p.get("cancel_subscription", {}).get("exact_match") for p in per]
        new_text = spread(new) if all(v is not None for v in new) else "-"
        size = [a["size_bytes"] / 1024 for a in adapters]
        lines += ["", f"LoRA adapter `{adapter}` (student + new intent): exact match over all intents "
                      f"{spread(em)}, on the new intent {new_text}, adapter size {spread(size)} KiB."]
    return "\n".join(lines) + "\n"


def _cpu_count() -> int:
    import os
    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "support-demo.yaml")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--teacher", default="support-teacher", help="registered name of the teacher")
    parser.add_argument("--student", default="support-student", help="registered name of the student")
    parser.add_argument("--adapter", default="support-student-cs", help="registered name of the adapter")
    parser.add_argument("--keep", action="store_true", help="keep each seed's data dir")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out", help="where the .md/.json go")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    runs = []
    for seed in seeds:
        print(f"== seed {seed}", file=sys.stderr, flush=True)
        runs.append(run_seed(args.recipe.resolve(), seed, args.keep))
        print(json.dumps(figures(runs[-1], args.teacher, args.student)), file=sys.stderr, flush=True)
    text = report(runs, args.recipe.resolve(), args.teacher, args.student, args.adapter)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "distill_report.md").write_text(text)
    (args.out / "distill_report.json").write_text(json.dumps(runs, indent=2))
    print(text)


if __name__ == "__main__":
    main()
