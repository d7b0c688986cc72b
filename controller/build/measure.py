"""The child process that runs a variant on a held-out set with the runtime a device runs, so its
peak memory is the runtime's own (no torch, no transformers in this process):

    python -m controller.build.measure --variant DIR --runtime onnxruntime-genai|onnxruntime
                                       --rows FILE --max-new-tokens N [--threads T]

Both kinds run on the agent's own engine (``agent.engine.Engine``, greedy ``SamplingParams``):
onnxruntime-genai variants on onnxruntime-genai, fallback variants on its plain onnxruntime loop
(agent/engine/ort_loop.py), so a variant is checked with exactly what a device will run. The
prompt is the model's chat template, or chat.prompt_text when it has none (as the PyTorch harness
does). Every prompt is answered alone, in order, and timed. stdout: one JSON object per line,
{"type": "progress"|"result", ...}; the result holds each answer (cleaned as the PyTorch harness
cleans its own), tokens, seconds and time to first token, the load time, and
``peak_memory_bytes`` (VmHWM of this process).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

MODULE = "controller.build.measure"
RUNTIMES = ("onnxruntime-genai", "onnxruntime")


def _emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class _Runner:
    def __init__(self, variant: Path, runtime: str, threads: int | None) -> None:
        from agent.engine import Engine

        self.engine = Engine.load(variant, threads=threads)
        if self.engine.info.runtime != runtime:
            raise ValueError(f"{variant} is a variant for {self.engine.info.runtime}, not {runtime}")
        self.context = self.engine.info.context_length

    def answer(self, prompt: str, max_new_tokens: int) -> tuple[str, int, float, float]:
        from agent.engine.answer import NoRoom, greedy_answer

        try:
            answer = greedy_answer(self.engine, prompt, max_new_tokens)
        except NoRoom:
            raise ValueError(f"a prompt of the data set does not fit this model's context "
                             f"({self.context} tokens): {prompt[:60]!r}") from None
        return answer.text, answer.tokens, answer.first_s, answer.total_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, type=Path)
    parser.add_argument("--runtime", required=True, choices=RUNTIMES)
    parser.add_argument("--rows", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)

    from controller.pipeline import chat
    from controller.pipeline.evaluate.measure import proc_status_bytes
    from controller.pipeline.jsonl import DataError, read_jsonl

    try:
        rows = read_jsonl(args.rows, required=("prompt",))
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.runtime == "onnxruntime-genai":
        import onnxruntime_genai  # noqa: F401 - loaded before the baseline, so it counts as runtime
    else:
        import onnxruntime  # noqa: F401 - likewise
    baseline = proc_status_bytes("VmRSS")
    started = time.perf_counter()
    try:
        runner = _Runner(args.variant, args.runtime, args.threads)
    except ValueError as e:  # VariantError names the file
        print(f"error: {e}", file=sys.stderr)
        return 2
    load_seconds = time.perf_counter() - started
    answers, tokens, seconds, first = [], [], [], []
    try:
        for number, row in enumerate(rows, start=1):
            text, count, first_s, total_s = runner.answer(row["prompt"], args.max_new_tokens)
            answers.append(chat.clean_answer(text))
            tokens.append(count)
            seconds.append(total_s)
            first.append(first_s)
            _emit({"type": "progress", "task": "check", "done": number, "total": len(rows), "unit": "prompt"})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _emit({"type": "result", "result": {
        "answers": answers, "tokens": tokens, "seconds": seconds, "first_token_s": first,
        "load_seconds": load_seconds, "peak_memory_bytes": proc_status_bytes("VmHWM"),
        "baseline_memory_bytes": baseline, "threads": args.threads or 0, "runtime": args.runtime}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
