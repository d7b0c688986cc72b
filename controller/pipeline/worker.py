"""The job worker: one recipe, run in a process of its own for the controller's job manager.

    python -m controller.pipeline.worker --recipe FILE --work-dir DIR --events FILE
                                         [--inputs-json FILE] [--models-json FILE]

The contract the controller relies on:

``--recipe FILE``
    The recipe YAML as submitted. It is validated again here; a path written in it is never
    opened as a path: data files come through ``--inputs-json``, models through
    ``--models-json`` (or an earlier step, or ``hf:``). A model given as a plain path fails.
``--inputs-json FILE``
    ``{"<path as written in the recipe>": "<stored copy>"}`` for every string
    ``recipe.file_refs(recipe)`` returned (the files the CLI uploaded).
``--models-json FILE``
    ``{"registry:NAME[:VERSION]": "<model dir>"}`` for every string ``recipe.registry_refs``
    returned, resolved by the controller before it started the worker.
``--work-dir DIR``
    The job's work directory. Starting the worker again with the same directory resumes:
    finished steps are skipped, an interrupted step continues (training from its checkpoint).
``--events FILE``
    Appended as JSON lines, flushed per line, each with ``"t"`` (unix seconds) and ``"type"``:

    - ``{"type": "progress", "task": "student/train", "done": 40, "total": 300, "loss": 1.2,
      "eta_s": 31.5, "unit": "step"}`` — ``task`` is ``<step id>/<part>``; other fields vary;
    - ``{"type": "log", "message": "..."}``;
    - ``{"type": "step", "step": "teacher", "state": "started"|"done"|"skipped", "index": 2,
      "count": 7}`` — ``index`` counts from 0;
    - ``{"type": "finished", "result": "<WORK/result.json>", "models": 3}`` — last line on success;
    - ``{"type": "error", "message": "..."}`` — last line on failure;
    - ``{"type": "cancelled"}`` — last line after SIGTERM.

Exit status: **0** success, and ``WORK/result.json`` holds ``{"recipe", "recipe_sha256",
"register": [{"name", "kind", "path", "params", "size_bytes", "metrics", "lineage",
"base_entry"?}]}`` (``path`` is an absolute directory inside the work dir; ``lineage`` has
recipe, recipe_sha256, step, output, kind, teacher, base, data {name: sha256},
hyperparameters, seed; a teacher/base that is another entry of the same result carries
``"entry": NAME``, and an adapter whose base is registered with it has ``base_entry``).
**1** failure: an ``error`` event, no result.json. **3** cancelled: SIGTERM (or SIGINT) asks
the running step to stop at its next check (between batches); its partial work stays for a
resume, no result.json. A second signal exits 3 at once. **2** bad command-line arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType
from typing import Any

from controller.pipeline.events import Cancelled, JsonlEvents

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_CANCELLED = 0, 1, 2, 3


class WorkerEvents(JsonlEvents):
    """JsonlEvents plus the worker's own event types."""

    def step(self, step: str, state: str, index: int, count: int) -> None:
        self._write({"type": "step", "step": step, "state": state, "index": index, "count": count})

    def finished(self, result: Path, models: int) -> None:
        self._write({"type": "finished", "result": str(result), "models": models})

    def error(self, message: str) -> None:
        self._write({"type": "error", "message": message})

    def cancelled(self) -> None:
        self._write({"type": "cancelled"})

    def cancelled_from_signal_handler(self) -> None:
        """The cancelled line, unless the interrupted main thread is mid-write (then the lock
        is held and waiting for it would deadlock the handler)."""
        if self._lock.acquire(blocking=False):
            try:
                self._f.write(json.dumps({"t": round(time.time(), 3), "type": "cancelled"}) + "\n")
                self._f.flush()
            finally:
                self._lock.release()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m controller.pipeline.worker",
                                     description="Run one recipe as a controller job.")
    parser.add_argument("--recipe", required=True, type=Path, help="the recipe YAML")
    parser.add_argument("--work-dir", required=True, type=Path, help="the job's work directory")
    parser.add_argument("--events", required=True, type=Path, help="events file (JSON lines, appended)")
    parser.add_argument("--inputs-json", type=Path, help="{path as written: stored file}")
    parser.add_argument("--models-json", type=Path, help="{registry ref: model dir}")
    args = parser.parse_args(argv)

    events = WorkerEvents(args.events)
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Runs in the main thread between two bytecodes, maybe inside events' lock: no logging.
        received.append(signal.Signals(signum).name)
        if len(received) > 1:
            events.cancelled_from_signal_handler()
            os._exit(EXIT_CANCELLED)
        events.request_cancel()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        return _run(args, events, received)
    finally:
        events.close()


def _run(args: argparse.Namespace, events: WorkerEvents, received: list[str]) -> int:
    from controller.pipeline.jsonl import DataError
    from controller.pipeline.recipe import RecipeError, load_recipe
    from controller.pipeline.runner import RunError, run_recipe

    try:
        recipe = load_recipe(args.recipe, origin=args.recipe.name)
        inputs = {k: Path(v) for k, v in _json_map(args.inputs_json, "--inputs-json").items()}
        models = {k: Path(v) for k, v in _json_map(args.models_json, "--models-json").items()}

        def resolve_model(ref: str) -> Path:
            if ref not in models:
                raise LookupError(f"{ref} was not resolved by the controller (not in --models-json)")
            return models[ref]

        result = run_recipe(recipe, args.work_dir, events, resolve_model=resolve_model, inputs=inputs,
                            base_dir=None)
    except Cancelled:
        events.log(f"stopped on {received[0] if received else 'request'}; partial work is kept for a rerun")
        events.cancelled()
        return EXIT_CANCELLED
    except (RecipeError, RunError, DataError) as e:
        if _cancel_requested(events):
            events.log(f"stopped on {received[0] if received else 'request'}: {e}")
            events.cancelled()
            return EXIT_CANCELLED
        events.error(str(e))
        print(f"error: {e}", file=sys.stderr)
        if e.__cause__ is not None:
            traceback.print_exception(e.__cause__, file=sys.stderr)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a bug still ends as an error event, with its traceback
        events.error(f"internal error: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        return EXIT_FAILED
    events.finished(result.result_path, len(result.entries))
    return EXIT_OK


def _cancel_requested(events: WorkerEvents) -> bool:
    try:
        events.check_cancelled()
    except Cancelled:
        return True
    return False


def _json_map(path: Path | None, option: str) -> dict[str, Any]:
    from controller.pipeline.jsonl import DataError

    if path is None:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{option} {path}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DataError(f"{option} {path}: expected a JSON object of strings to strings")
    return data


if __name__ == "__main__":
    sys.exit(main())
