"""Evaluate a model in a process of its own, so its peak memory is its own.

``evaluate_isolated`` starts ``python -m controller.pipeline.evaluate.measure`` and relays the
child's progress to the caller's Events. The child runs :func:`harness.evaluate` and adds
``peak_memory_bytes``: ``VmHWM`` from its own ``/proc/self/status`` (``ru_maxrss`` of a child
can carry its parent's peak), and ``baseline_memory_bytes``: ``VmRSS`` once torch and
transformers are imported, before the model loads. Use this for the numbers a user reads.

Child protocol: one JSON object per stdout line, {"type": "progress"|"log"|"result", ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from controller.pipeline.child import ChildFailed, run_json_child
from controller.pipeline.events import Events

MODULE = "controller.pipeline.evaluate.measure"


class EvaluationError(RuntimeError):
    """The evaluation process failed; the message carries the end of its stderr."""


def evaluate_isolated(model_ref: str | Path, rows_path: Path, *, adapter_dir: Path | None = None,
                      max_new_tokens: int = 64, batch_size: int = 32, latency_samples: int = 50,
                      device: str = "auto", threads: int | None = None, timeout_s: float | None = None,
                      events: Events | None = None, metrics: list[str] | None = None,
                      judge: dict[str, Any] | None = None) -> dict[str, Any]:
    """``harness.evaluate`` on the rows of ``rows_path`` (JSONL, rows.py's shapes) with the named
    ``metrics`` and ``judge`` settings (judge.JudgeConfig's fields) in a
    fresh process; its result plus "peak_memory_bytes" and "baseline_memory_bytes".
    ``threads`` sets torch's thread count in the child. Raises EvaluationError with the child's
    stderr tail when it fails or runs past ``timeout_s``; Cancelled (after killing it) when
    ``events`` asks for a cancel."""
    events = events or Events()
    command = [sys.executable, "-m", MODULE, "--model", str(model_ref), "--rows", str(rows_path),
               "--max-new-tokens", str(max_new_tokens), "--batch-size", str(batch_size),
               "--latency-samples", str(latency_samples), "--device", device]
    if adapter_dir is not None:
        command += ["--adapter-dir", str(adapter_dir)]
    if threads is not None:
        command += ["--threads", str(threads)]
    if metrics:
        command += ["--metrics", ",".join(metrics)]
    if judge:
        command += ["--judge", json.dumps(judge)]
    try:
        return run_json_child(command, events, timeout_s)
    except ChildFailed as e:
        if e.timed_out:
            raise EvaluationError(f"evaluation of {model_ref} ran past {timeout_s} s; "
                                  f"stopped it{e.tail}") from None
        raise EvaluationError(f"evaluation of {model_ref} failed (exit {e.returncode}){e.tail}") from None


# -- the child -----------------------------------------------------------------------------


class _StdoutEvents(Events):
    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        _emit({"type": "progress", "task": task, "done": done, "total": total, **fields})

    def log(self, message: str) -> None:
        _emit({"type": "log", "message": message})


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def proc_status_bytes(field: str) -> int | None:
    """A ``kB`` field of this process's /proc/self/status in bytes; None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--rows", required=True, type=Path)
    parser.add_argument("--adapter-dir", type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--latency-samples", type=int, default=50)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--metrics", default="")
    parser.add_argument("--judge", default="")
    args = parser.parse_args(argv)

    from controller.pipeline.evaluate.judge import JudgeConfig, JudgeError
    from controller.pipeline.evaluate.metrics import check_metrics
    from controller.pipeline.evaluate.rows import read_rows
    from controller.pipeline.jsonl import DataError

    try:  # before the heavy imports: a bad file or setting fails in a blink
        rows = read_rows(args.rows)
        names = check_metrics(args.metrics) if args.metrics else None
        judge = JudgeConfig.from_dict(json.loads(args.judge)) if args.judge else None
    except (DataError, JudgeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    import torch
    import transformers  # noqa: F401 - loaded before the baseline, so it counts as runtime

    from controller.pipeline.evaluate.harness import evaluate
    from controller.pipeline.modelkit import ModelError

    if args.threads:
        torch.set_num_threads(args.threads)
    baseline = proc_status_bytes("VmRSS")
    try:
        result = evaluate(args.model, rows, metrics=names, judge=judge, adapter_dir=args.adapter_dir,
                          max_new_tokens=args.max_new_tokens,
                          batch_size=args.batch_size, latency_samples=args.latency_samples,
                          device=args.device, events=_StdoutEvents())
    except (ModelError, ValueError) as e:  # JudgeError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["peak_memory_bytes"] = proc_status_bytes("VmHWM")
    result["baseline_memory_bytes"] = baseline
    result["threads"] = torch.get_num_threads()
    _emit({"type": "result", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
