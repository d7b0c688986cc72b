"""Check a built variant on a held-out set against the PyTorch fp32 model it was built from.

``pytorch_reference`` answers every prompt greedily with the source model (the evaluation
harness, controller/pipeline/evaluate) once per build; ``check_variant`` answers the same prompts
with the variant in a child process running the device's runtime (measure.py: the agent's
engine for onnxruntime-genai variants) and records:

- ``exact_match`` (and per intent) against the gold answers, and ``reference_exact_match``;
- ``exact_match_delta``: the variant's exact match minus the fp32 model's, in points (-1.5 = lost
  1.5 points);
- ``greedy_agreement``: the fraction of prompts whose greedy answer equals the fp32 model's;
- ``golden``: the first ``GOLDEN_ROWS`` rows (prompt, gold answer) and how many of them the
  variant answered exactly; a manifest carries them to the device, whose gate asks them again
  on its own hardware before it switches to the variant;
- ``size_bytes`` on disk (without slmops-variant.json), ``tokens_per_s`` (generated tokens over
  the seconds the answers took, as the PyTorch harness counts it; the first answer, a warm-up,
  is left out), time to first token and latency percentiles, load time and
  ``peak_memory_bytes`` of the runtime's process.

A variant built for CUDA is checked on the CPU (the genai builder emits CUDA graphs on any machine,
and onnxruntime-genai runs them on the CPU once their provider options are removed); its metrics
say so in ``notes`` and ``measured_on_target``, and gates.py skips the speed and memory gates.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from controller.build.builder import RUNTIME_GENAI, VARIANT_META
from controller.build.measure import MODULE as MEASURE_MODULE
from controller.pipeline.child import ChildFailed, run_json_child
from controller.pipeline.evaluate.metrics import exact_match, percentile, summarize
from controller.pipeline.events import Events
from controller.pipeline.jsonl import write_atomic
from controller.pipeline.modelkit.files import dir_size

GOLDEN_ROWS = 20  # held-out rows a manifest carries for the on-device gate


class CheckError(RuntimeError):
    """A variant that could not be run on the held-out set; the message carries why."""


def rows_sha256(rows: Sequence[Mapping[str, Any]]) -> str:
    text = "".join(json.dumps({k: r.get(k) for k in ("intent", "prompt", "answer")}, sort_keys=True) + "\n"
                   for r in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def pytorch_reference(model_dir: Path, rows: Sequence[Mapping[str, Any]], *, max_new_tokens: int = 64,
                      batch_size: int = 16, threads: int | None = None, events: Events | None = None,
                      cache: Path | None = None) -> dict[str, Any]:
    """The fp32 PyTorch model's greedy answers and exact match on ``rows`` (cached in ``cache``
    for the same rows and settings, so a resumed build does not answer them again). ``threads``
    sets torch's thread count for the call (on a busy machine, fewer threads than cores can be
    many times faster for a small model)."""
    key = {"model": str(model_dir), "rows": rows_sha256(rows), "max_new_tokens": max_new_tokens}
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return dict(cached["reference"])
        except (OSError, ValueError, KeyError):
            pass
    import torch

    from controller.pipeline.evaluate import generate_answers
    from controller.pipeline.modelkit import load_model

    events = events or Events()
    events.log(f"answering {len(rows)} prompts with the fp32 PyTorch model (the reference)")
    model, tokenizer = load_model(model_dir, device="cpu", events=events)
    model = model.float()
    started = time.perf_counter()
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, events=events,
                                       task="reference")
    finally:
        torch.set_num_threads(before)
    summary = summarize([{"intent": r["intent"], "prediction": p, "answer": r["answer"]}
                         for r, p in zip(rows, answers, strict=True)])
    reference = {"answers": answers, "exact_match": summary["exact_match"],
                 "per_intent": summary["per_intent"], "n": summary["n"],
                 "seconds": round(time.perf_counter() - started, 3), "dtype": "float32"}
    if cache is not None:
        write_atomic(cache, json.dumps({"key": key, "reference": reference}).encode("utf-8"))
    return reference


def check_variant(variant_dir: Path, runtime: str, rows: Sequence[Mapping[str, Any]],
                  reference: Mapping[str, Any], *, cuda: bool = False, on_target: bool = True,
                  max_new_tokens: int = 64, threads: int | None = None, timeout_s: float | None = None,
                  events: Events | None = None, python: str = sys.executable) -> dict[str, Any]:
    """The variant's metrics on ``rows`` against ``reference`` (see the module docstring).
    ``on_target``: this machine has the hardware the variant's profile is for (else its speed
    and memory say little about the device's, and the metrics say so)."""
    events = events or Events()
    variant_dir = Path(variant_dir)
    notes: list[str] = []
    if not cuda and not on_target:
        notes.append("checked on this machine, which does not match the profile's hardware: its "
                     "accuracy carries over, its speed and memory do not")
    with tempfile.TemporaryDirectory(prefix="check-") as scratch:
        run_dir = variant_dir
        if cuda:  # the fallback's decode loop runs on the CPU provider anyway
            if runtime == RUNTIME_GENAI:
                run_dir = cpu_view(variant_dir, Path(scratch) / "cpu-view")
            notes.append("built for CUDA, checked on the CPU with the same graph: its accuracy carries "
                         "over to the GPU, its speed and memory do not")
        rows_path = Path(scratch) / "rows.jsonl"
        rows_path.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows),
                             encoding="utf-8")
        command = [python, "-m", MEASURE_MODULE, "--variant", str(run_dir), "--runtime", runtime,
                   "--rows", str(rows_path), "--max-new-tokens", str(max_new_tokens)]
        if threads:
            command += ["--threads", str(threads)]
        raw = _run_child(command, variant_dir, timeout_s, events)
    return metrics_from(raw, variant_dir, rows, reference, on_target=on_target and not cuda, notes=notes)


def metrics_from(raw: Mapping[str, Any], variant_dir: Path, rows: Sequence[Mapping[str, Any]],
                 reference: Mapping[str, Any], *, on_target: bool = True,
                 notes: Sequence[str] = ()) -> dict[str, Any]:
    answers: list[str] = list(raw["answers"])
    summary = summarize([{"intent": r["intent"], "prediction": p, "answer": r["answer"]}
                         for r, p in zip(rows, answers, strict=True)])
    ref_answers = list(reference["answers"])
    agree = sum(a == b for a, b in zip(answers, ref_answers, strict=True)) / len(answers)
    tokens, seconds, first = list(raw["tokens"]), list(raw["seconds"]), list(raw["first_token_s"])
    timed = slice(1, None) if len(seconds) > 1 else slice(None)  # the first answer warms up
    decode_tokens = sum(max(0, t - 1) for t in tokens[timed])
    decode_seconds = sum(s - f for s, f in zip(seconds[timed], first[timed], strict=True))
    golden = [(r["prompt"], r["answer"], a) for r, a in zip(rows[:GOLDEN_ROWS], answers, strict=False)]
    return {
        "n": summary["n"],
        "exact_match": summary["exact_match"],
        "per_intent": summary["per_intent"],
        "reference_exact_match": reference["exact_match"],
        "exact_match_delta": round((summary["exact_match"] - reference["exact_match"]) * 100, 4),
        "greedy_agreement": agree,
        # what a device downloads and loads, without slmops-variant.json (rewritten as it is stored)
        "size_bytes": dir_size(variant_dir) - (dir_size(variant_dir / VARIANT_META)
                                               if (variant_dir / VARIANT_META).is_file() else 0),
        "tokens_per_s": sum(tokens[timed]) / max(sum(seconds[timed]), 1e-9),
        "decode_tokens_per_s": decode_tokens / decode_seconds if decode_seconds > 0 else None,
        "ttft_ms": {"p50": percentile(first[timed], 50) * 1000, "p95": percentile(first[timed], 95) * 1000},
        "latency_ms": {"p50": percentile(seconds[timed], 50) * 1000,
                       "p95": percentile(seconds[timed], 95) * 1000},
        "load_seconds": raw.get("load_seconds"),
        "peak_memory_bytes": raw.get("peak_memory_bytes"),
        "runtime": raw.get("runtime"),
        "threads": raw.get("threads"),
        "checked_on": "cpu",
        "measured_on_target": on_target,
        "notes": list(notes),
        "golden": {"rows": [{"prompt": p, "answer": g} for p, g, _ in golden],
                   "correct": sum(exact_match(a, g) for _, g, a in golden)},
    }


def this_machine() -> dict[str, Any]:
    """This machine's hardware report, as an agent would send it (for matching a profile)."""
    from google.protobuf import json_format

    from agent.hardware import detect_hardware

    return json_format.MessageToDict(detect_hardware(Path(tempfile.gettempdir())))


def cpu_view(variant_dir: Path, view: Path) -> Path:
    """The variant with its execution providers removed from genai_config.json (so
    onnxruntime-genai runs it on the CPU), its other files hard-linked (or copied)."""
    view.mkdir(parents=True)
    for item in Path(variant_dir).iterdir():
        if item.is_file() and item.name != "genai_config.json":
            try:
                os.link(item, view / item.name)
            except OSError:
                shutil.copy2(item, view / item.name)
    config = json.loads((Path(variant_dir) / "genai_config.json").read_text(encoding="utf-8"))
    options = config.get("model", {}).get("decoder", {}).get("session_options", {})
    if isinstance(options, dict):
        options["provider_options"] = []
    (view / "genai_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return view


def _run_child(command: list[str], variant_dir: Path, timeout_s: float | None,
               events: Events) -> dict[str, Any]:
    try:
        return run_json_child(command, events, timeout_s)
    except ChildFailed as e:
        if e.timed_out:
            raise CheckError(f"checking {variant_dir} ran past {timeout_s} s; stopped it{e.tail}") from None
        raise CheckError(f"running {variant_dir} on the held-out set failed (exit {e.returncode})"
                         f"{e.tail}") from None
