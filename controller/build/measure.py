"""The child process that runs a variant on a held-out set with the runtime a device runs, so its
peak memory is the runtime's own (no torch, no transformers in this process):

    python -m controller.build.measure --variant DIR --runtime onnxruntime-genai|onnxruntime
                                       --rows FILE --max-new-tokens N [--threads T] [--perplexity]

Both kinds run on the agent's own engine (``agent.engine.Engine``, greedy ``SamplingParams``):
onnxruntime-genai variants on onnxruntime-genai, fallback variants on its plain onnxruntime loop
(agent/engine/ort_loop.py), so a variant is checked with exactly what a device will run. The
prompt is the model's chat template, or chat.prompt_text when it has none (as the PyTorch harness
does). Every prompt is answered alone, in order, and timed. stdout: one JSON object per line,
{"type": "progress"|"result", ...}; the result holds each answer (cleaned as the PyTorch harness
cleans its own), tokens, seconds and time to first token, the load time, and
``peak_memory_bytes`` (VmHWM of this process). A row is ``{"prompt"}`` or ``{"messages"}`` (the
chat turns before the answer, rendered with the model's template), with ``"reference"``.

``--perplexity`` (onnxruntime-genai variants): after the answers and the memory reading, each
reference is scored given its prompt from one prefill's logits (``get_output("logits")``,
every position at once): ``nll`` and ``perplexity_tokens``. The plain onnxruntime fallback
keeps only the last position's logits, so it reports none.
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

    def prompt_text(self, row: dict[str, Any]) -> str:
        from agent.chat_format import prompt_text

        messages = row.get("messages") or [{"role": "user", "content": row["prompt"]}]
        if self.engine.info.chat_template is not None:
            return self.engine.chat_prompt(messages)
        users = [m["content"] for m in messages if m.get("role") == "user"]
        return prompt_text(users[-1] if users else "")

    def answer(self, row: dict[str, Any], max_new_tokens: int) -> tuple[str, int, float, float]:
        from agent.engine.answer import NoRoom, greedy_answer

        if "messages" not in row:  # one user turn: exactly what a device's gate asks
            try:
                answer = greedy_answer(self.engine, row["prompt"], max_new_tokens)
            except NoRoom:
                raise ValueError(f"a prompt of the data set does not fit this model's context "
                                 f"({self.context} tokens): {row['prompt'][:60]!r}") from None
            return answer.text, answer.tokens, answer.first_s, answer.total_s
        return self._answer_text(self.prompt_text(row), max_new_tokens)

    def _answer_text(self, text: str, max_new_tokens: int) -> tuple[str, int, float, float]:
        # greedy_answer takes one user message; a chat row's turns are rendered here instead
        from agent.engine.sampling import SamplingParams

        room = self.context - len(self.engine.encode(text))
        if room < 1:
            raise ValueError(f"a prompt of the data set does not fit this model's context "
                             f"({self.context} tokens): {text[-60:]!r}")
        started = time.perf_counter()
        first = 0.0
        greedy = SamplingParams(max_tokens=min(max_new_tokens, room), temperature=0.0)
        stream = self.engine.stream(text, greedy)
        pieces: list[str] = []
        for piece in stream:
            if not pieces:
                first = time.perf_counter() - started
            pieces.append(piece.text)
        total = time.perf_counter() - started
        return "".join(pieces), stream.completion_tokens, first or total, total

    def nll(self, row: dict[str, Any]) -> tuple[float, int] | None:
        """The reference's negative log-likelihood given the prompt and its token count; None
        when this runtime gives no per-position logits."""
        import numpy as np

        from agent.engine.genai_runtime import GenaiRuntime

        runtime = self.engine._runtime  # the og.Model behind the engine: its logits
        if not isinstance(runtime, GenaiRuntime) or runtime._adapters is not None:
            return None
        import onnxruntime_genai as og

        prompt = list(runtime.encode(self.prompt_text(row)))
        ids = prompt + list(runtime.encode(row["reference"]))
        if len(ids) <= len(prompt) or len(ids) > self.context:
            return None
        params = og.GeneratorParams(runtime._model)
        params.set_search_options(max_length=len(ids) + 1)
        generator = og.Generator(runtime._model, params)
        generator.append_tokens(np.asarray(ids, dtype=np.int32))
        logits = np.asarray(generator.get_output("logits"), dtype=np.float64)[0]
        if logits.shape[0] != len(ids):
            return None
        shifted = logits[len(prompt) - 1:-1]
        top = shifted.max(axis=1, keepdims=True)
        logz = top[:, 0] + np.log(np.exp(shifted - top).sum(axis=1))
        picked = shifted[np.arange(len(shifted)), ids[len(prompt):]]
        return float((logz - picked).sum()), len(shifted)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.splitlines()[0])
    parser.add_argument("--variant", required=True, type=Path)
    parser.add_argument("--runtime", required=True, choices=RUNTIMES)
    parser.add_argument("--rows", required=True, type=Path)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--perplexity", action="store_true")
    args = parser.parse_args(argv)

    from controller.pipeline import chat
    from controller.pipeline.evaluate.measure import proc_status_bytes
    from controller.pipeline.jsonl import DataError, read_jsonl

    try:
        rows = read_jsonl(args.rows)
        for number, row in enumerate(rows, start=1):
            if not isinstance(row.get("prompt"), str) and not isinstance(row.get("messages"), list):
                raise DataError(f"{args.rows}: row {number}: no 'prompt' and no 'messages'")
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
            text, count, first_s, total_s = runner.answer(row, args.max_new_tokens)
            answers.append(chat.clean_answer(text))
            tokens.append(count)
            seconds.append(total_s)
            first.append(first_s)
            _emit({"type": "progress", "task": "check", "done": number, "total": len(rows), "unit": "prompt"})
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    peak = proc_status_bytes("VmHWM")  # before scoring: prefilling whole references is not serving
    scored: dict[str, Any] = {}
    if args.perplexity:
        nll, count, unscored = 0.0, 0, 0
        for row in rows:
            one = runner.nll(row) if isinstance(row.get("reference"), str) else None
            if one is None:
                unscored += 1
                continue
            nll, count = nll + one[0], count + one[1]
        scored = {"nll": nll, "perplexity_tokens": count, "perplexity_unscored": unscored}
    _emit({"type": "result", "result": {
        "answers": answers, "tokens": tokens, "seconds": seconds, "first_token_s": first,
        "load_seconds": load_seconds, "peak_memory_bytes": peak, **scored,
        "baseline_memory_bytes": baseline, "threads": args.threads or 0, "runtime": args.runtime}})
    return 0


if __name__ == "__main__":
    sys.exit(main())
