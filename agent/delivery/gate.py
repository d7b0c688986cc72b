"""The on-device gate: may this staged variant go live on this hardware?

It answers the manifest's golden prompts exactly as the build's check answered them when it
recorded the expected answers (controller/build/measure.py): one prompt at a time, in order,
greedy, at most ``max_new_tokens``, formatted with the model's chat template, or with the plain
prompt format when the variant has none; the answer cut at the end marker and stripped
(chat.clean_answer) and compared after the evaluation's normalisation (NFKC, case-folded,
whitespace collapsed). Any difference in that recipe would fail a good variant, so the three
pieces copied from the controller (which the agent may not import) are named below, and
tests/test_delivery_gate.py checks them against the originals.

The same answers give the speed figures, counted as the build counts them (check.metrics_from),
so the profile's limits mean the same thing here as at build time: the first answer warms up and
is not timed; ``tokens_per_s`` is generated tokens over the seconds the answers took (what the
profile's ``min_tokens_per_s`` is checked against at build time); ``decode_tokens_per_s`` leaves
out each answer's first token; p50/p95 are per-answer latencies. Memory is the resident memory
this process gained since ``baseline_rss`` (taken before the new engine was loaded, so the old
model still serving is not counted), or its peak resident memory when no baseline is given.

``run_gate`` blocks for as long as the answers take: call it in a worker thread from async code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psutil

from agent.bench import DEFAULT_PROMPTS, memory_status, percentile
from agent.chat_format import clean_answer, normalize
from agent.delivery.manifest import Gate
from agent.engine import Engine, ParamError
from agent.engine.answer import NoRoom, greedy_answer

SPEED_PROMPTS = DEFAULT_PROMPTS[:5]  # when the manifest has no golden prompts: 1 warm-up + 4 timed
MAX_FAILURES_SHOWN = 5
MAX_TEXT_SHOWN = 200
MB = 1_000_000


@dataclass(frozen=True)
class GateResult:
    passed: bool
    reason: str  # "" when passed; else "gate: <every failed check, measured vs limit>"
    figures: dict[str, Any]  # JSON-able: what was measured, the limits, the first failures


@dataclass(frozen=True)
class _Answer:
    text: str
    tokens: int
    first_s: float
    total_s: float
    error: str = ""  # the prompt could not be answered (does not fit the context)


class _Memory:
    """The largest resident set seen while the gate ran (sampled during and after each answer)."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.peak = 0

    def sample(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)


def _answer(engine: Engine, prompt: str, max_new_tokens: int, memory: _Memory) -> _Answer:
    """One greedy answer, timed, as the build's check takes it (agent/engine/answer.py)."""
    try:
        # sampled at the first piece: the generation's KV cache is allocated by then
        answer = greedy_answer(engine, prompt, max_new_tokens, on_first_piece=memory.sample)
    except (NoRoom, ParamError) as e:
        return _Answer("", 0, 0.0, 0.0, str(e))
    memory.sample()
    return _Answer(clean_answer(answer.text), answer.tokens, answer.first_s, answer.total_s)


def _pct(fraction: float) -> str:
    return f"{fraction * 100:.1f}".rstrip("0").rstrip(".") + " %"


def _num(value: float) -> str:
    """A limit as written: 50, 12.5, 0.001 (no exponent)."""
    return f"{value:.6f}".rstrip("0").rstrip(".")


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT_SHOWN else text[:MAX_TEXT_SHOWN] + "..."


def _speed(answers: list[_Answer]) -> dict[str, Any]:
    """Speed figures over the timed answers, as controller/build/check.py metrics_from."""
    answered = [a for a in answers if not a.error]
    timed = answered[1:] if len(answered) > 1 else answered  # the first answer warms up
    seconds = sum(a.total_s for a in timed)
    decode_tokens = sum(max(0, a.tokens - 1) for a in timed)
    decode_seconds = sum(a.total_s - a.first_s for a in timed)
    latencies = [a.total_s for a in timed]
    return {
        "timed_answers": len(timed),
        "tokens_per_s": round(sum(a.tokens for a in timed) / seconds, 2) if seconds > 0 else None,
        "decode_tokens_per_s": round(decode_tokens / decode_seconds, 2) if decode_seconds > 0 else None,
        "p50_ms": round(percentile(latencies, 50) * 1000, 2) if latencies else None,
        "p95_ms": round(percentile(latencies, 95) * 1000, 2) if latencies else None,
    }


def run_gate(engine: Engine, gate: Gate, *, baseline_rss: int | None = None) -> GateResult:
    """Answer the gate's golden prompts on ``engine`` and check accuracy, speed and memory
    against the gate's limits (see the module docstring). Never raises for a variant that
    answers badly or breaks while answering: that is a failed gate, with the reason."""
    started = time.perf_counter()
    memory = _Memory()
    memory.sample()
    figures: dict[str, Any] = {
        "min_accuracy": gate.min_accuracy, "min_tokens_per_s": gate.min_tokens_per_s,
        "max_p95_ms": gate.max_p95_ms, "max_memory_bytes": gate.max_memory_bytes,
        "max_new_tokens": gate.max_new_tokens, "chat_template": engine.info.chat_template is not None,
    }
    prompts = [p for p, _ in gate.golden] or list(SPEED_PROMPTS)
    try:
        answers = [_answer(engine, p, gate.max_new_tokens, memory) for p in prompts]
    except Exception as e:  # noqa: BLE001 - whatever breaks the variant fails the gate, reason reported
        figures["seconds"] = round(time.perf_counter() - started, 3)
        return GateResult(False, f"gate: the variant failed while answering the gate's prompts "
                                 f"({type(e).__name__}: {e})", figures)
    failed: list[str] = []

    if gate.golden:
        wrong = [(p, expected, a) for (p, expected), a in zip(gate.golden, answers, strict=True)
                 if a.error or normalize(a.text) != normalize(expected)]
        n, correct = len(gate.golden), len(gate.golden) - len(wrong)
        accuracy = correct / n
        figures.update(accuracy=round(accuracy, 4), correct=correct, n=n, failures=[
            {"prompt": _short(p), "expected": _short(expected),
             "got": _short(a.text) if not a.error else f"(not answered: {a.error})"}
            for p, expected, a in wrong[:MAX_FAILURES_SHOWN]])
        if accuracy + 1e-9 < gate.min_accuracy:
            failed.append(f"{correct}/{n} golden prompts answered exactly ({_pct(accuracy)}), "
                          f"minimum {_pct(gate.min_accuracy)}")
    else:
        figures.update(accuracy=None, correct=0, n=0, failures=[],
                       accuracy_skipped="the manifest has no golden prompts; accuracy not checked, "
                                        f"speed measured on {len(prompts)} fixed prompts")

    speed = _speed(answers)
    figures.update(speed)
    if gate.min_tokens_per_s > 0:
        measured = speed["tokens_per_s"]
        if measured is None:
            failed.append(f"tokens/s could not be measured (no answer was timed), minimum "
                          f"{_num(gate.min_tokens_per_s)}")
        elif measured < gate.min_tokens_per_s:
            failed.append(f"{measured:.1f} tokens/s, minimum {_num(gate.min_tokens_per_s)}")
    if gate.max_p95_ms > 0 and speed["p95_ms"] is not None and speed["p95_ms"] > gate.max_p95_ms:
        failed.append(f"p95 latency {speed['p95_ms']:.0f} ms per answer, maximum {_num(gate.max_p95_ms)} ms")

    if baseline_rss is not None:
        used: int | None = max(0, memory.peak - baseline_rss)
        figures.update(memory_basis="resident memory gained since before the variant was loaded",
                       baseline_rss_bytes=baseline_rss)
    else:
        used = memory_status().get("VmHWM") or memory.peak or None
        figures["memory_basis"] = "peak resident memory of the agent's process"
    figures["memory_bytes"] = used
    if gate.max_memory_bytes > 0:
        if used is None:
            figures["memory_note"] = "memory could not be measured here; memory limit not applied"
        elif used > gate.max_memory_bytes:
            failed.append(f"memory {used / MB:.1f} MB, maximum {gate.max_memory_bytes / MB:.1f} MB")

    figures["seconds"] = round(time.perf_counter() - started, 3)
    return GateResult(not failed, "gate: " + "; ".join(failed) if failed else "", figures)
