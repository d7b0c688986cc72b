"""Check a built variant on a held-out set against the PyTorch fp32 model it was built from.

``pytorch_reference`` answers every prompt greedily with the source model (the evaluation
harness, controller/pipeline/evaluate) once per build; ``check_variant`` answers the same prompts
with the variant in a child process running the device's runtime (measure.py: the agent's
engine for onnxruntime-genai variants) and records:

- ``greedy_agreement``: the fraction of prompts whose greedy answer equals the fp32 model's;
- ``rouge_l_vs_fp32``: the mean ROUGE-L F1 of the variant's answers against the fp32 answers;
- where rows have references: ``exact_match`` (and per intent, for the bundled task's rows)
  against them, ``reference_exact_match`` and ``exact_match_delta`` (the variant's exact match
  minus the fp32 model's, in points: -1.5 = lost 1.5 points); the task metric (``task_metric``:
  exact_match for the bundled task's rows, which carry intents, else rouge_l against the
  references), its value, the fp32 model's (``reference_task_metric``) and ``metric_drop`` (points
  lost);
- with ``perplexity``: ``perplexity`` and ``reference_perplexity`` of the references given
  their prompts and ``perplexity_ratio`` (variant / fp32), for onnxruntime-genai variants;
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
from controller.pipeline.evaluate.metrics import (
    exact_match,
    percentile,
    perplexity_of,
    rouge_l,
    score_answers,
)
from controller.pipeline.evaluate.rows import EvalRow, has_intents
from controller.pipeline.events import Events
from controller.pipeline.jsonl import write_atomic
from controller.pipeline.modelkit.files import dir_size

GOLDEN_ROWS = 20  # held-out rows a manifest carries for the on-device gate


class CheckError(RuntimeError):
    """A variant that could not be run on the held-out set; the message carries why."""


def rows_sha256(rows: Sequence[EvalRow]) -> str:
    text = "".join(json.dumps(r.wire(), sort_keys=True) + "\n" for r in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _task_scores(rows: Sequence[EvalRow], answers: Sequence[str]) -> dict[str, Any]:
    """Exact match (per intent for the bundled task's rows) and the task metric, over the rows
    with references; {} when none has one."""
    scored = [(r, a) for r, a in zip(rows, answers, strict=True) if r.reference is not None]
    if not scored:
        return {}
    intents = has_intents([r for r, _ in scored])
    task = "exact_match" if intents else "rouge_l"
    out = score_answers([a for _, a in scored], [r.reference or "" for r, _ in scored],
                        ("exact_match", "rouge_l"), [r.intent or "" for r, _ in scored] if intents else None)
    return {"exact_match": out["exact_match"], "per_intent": out.get("per_intent", {}), "task_metric": task,
            "task_metric_value": out[task], "references": len(scored), "intents": intents}


def pytorch_reference(model_dir: Path, rows: Sequence[EvalRow], *, max_new_tokens: int = 64,
                      batch_size: int = 16, threads: int | None = None, events: Events | None = None,
                      cache: Path | None = None, perplexity: bool = False) -> dict[str, Any]:
    """The fp32 PyTorch model's greedy answers on ``rows``, its exact match and task metric on
    those with references, and with ``perplexity`` its perplexity on them (cached in ``cache``
    for the same rows and settings, so a resumed build does not answer them again). ``threads``
    sets torch's thread count for the call (on a busy machine, fewer threads than cores can be
    many times faster for a small model)."""
    key = {"model": str(model_dir), "rows": rows_sha256(rows), "max_new_tokens": max_new_tokens,
           "perplexity": perplexity}
    if cache is not None and cache.is_file():
        try:
            cached = json.loads(cache.read_text(encoding="utf-8"))
            if cached.get("key") == key:
                return dict(cached["reference"])
        except (OSError, ValueError, KeyError):
            pass
    import torch

    from controller.pipeline.evaluate import generate_answers
    from controller.pipeline.evaluate.harness import perplexity as score_perplexity
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
            answers = generate_answers(model, tokenizer, [list(r.messages) for r in rows],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, events=events,
                                       task="reference")
            scored = score_perplexity(model, tokenizer, [r for r in rows if r.reference is not None]) \
                if perplexity else None
    finally:
        torch.set_num_threads(before)
    reference: dict[str, Any] = {"answers": answers, "n": len(rows), **_task_scores(rows, answers),
                                 "seconds": round(time.perf_counter() - started, 3), "dtype": "float32"}
    if scored is not None:
        reference.update(perplexity=perplexity_of(scored["nll"], scored["tokens"]),
                         perplexity_tokens=scored["tokens"])
    if cache is not None:
        write_atomic(cache, json.dumps({"key": key, "reference": reference}).encode("utf-8"))
    return reference


def check_variant(variant_dir: Path, runtime: str, rows: Sequence[EvalRow],
                  reference: Mapping[str, Any], *, cuda: bool = False, on_target: bool = True,
                  max_new_tokens: int = 64, threads: int | None = None, timeout_s: float | None = None,
                  events: Events | None = None, python: str = sys.executable,
                  perplexity: bool = False) -> dict[str, Any]:
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
        rows_path.write_text("".join(json.dumps(_wire(r)) + "\n" for r in rows), encoding="utf-8")
        command = [python, "-m", MEASURE_MODULE, "--variant", str(run_dir), "--runtime", runtime,
                   "--rows", str(rows_path), "--max-new-tokens", str(max_new_tokens)]
        if threads:
            command += ["--threads", str(threads)]
        if perplexity:
            command += ["--perplexity"]
        raw = _run_child(command, variant_dir, timeout_s, events)
    return metrics_from(raw, variant_dir, rows, reference, on_target=on_target and not cuda, notes=notes)


def _wire(row: EvalRow) -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": row.prompt} if row.one_turn else {"messages": list(row.messages)}
    if row.reference is not None:
        out["reference"] = row.reference
    return out


def metrics_from(raw: Mapping[str, Any], variant_dir: Path, rows: Sequence[EvalRow],
                 reference: Mapping[str, Any], *, on_target: bool = True,
                 notes: Sequence[str] = ()) -> dict[str, Any]:
    answers: list[str] = list(raw["answers"])
    ref_answers = list(reference["answers"])
    agree = sum(a == b for a, b in zip(answers, ref_answers, strict=True)) / len(answers)
    vs_fp32 = sum(rouge_l(a, b) for a, b in zip(answers, ref_answers, strict=True)) / len(answers)
    tokens, seconds, first = list(raw["tokens"]), list(raw["seconds"]), list(raw["first_token_s"])
    timed = slice(1, None) if len(seconds) > 1 else slice(None)  # the first answer warms up
    decode_tokens = sum(max(0, t - 1) for t in tokens[timed])
    decode_seconds = sum(s - f for s, f in zip(seconds[timed], first[timed], strict=True))
    golden = [(r.prompt, r.reference, a) for r, a in zip(rows, answers, strict=True)
              if r.one_turn and r.reference is not None][:GOLDEN_ROWS]
    notes = list(notes)
    quality: dict[str, Any] = {}
    task = _task_scores(rows, answers)
    if task and "task_metric" in reference:
        quality = {
            "exact_match": task["exact_match"], "per_intent": task["per_intent"],
            "reference_exact_match": reference["exact_match"],
            "exact_match_delta": round((task["exact_match"] - reference["exact_match"]) * 100, 4),
            "task_metric": task["task_metric"], "task_metric_value": task["task_metric_value"],
            "reference_task_metric": reference["task_metric_value"],
            "metric_drop": round((reference["task_metric_value"] - task["task_metric_value"]) * 100, 4),
            "references": task["references"], "intents": task["intents"]}
    else:
        quality = {"intents": False}
    if "nll" in raw and reference.get("perplexity"):
        variant_ppl = perplexity_of(float(raw["nll"]), int(raw.get("perplexity_tokens") or 0))
        quality.update(perplexity=variant_ppl, reference_perplexity=reference["perplexity"],
                       perplexity_ratio=variant_ppl / reference["perplexity"] if variant_ppl else None)
        if raw.get("perplexity_tokens") != reference.get("perplexity_tokens") \
                or raw.get("perplexity_unscored"):
            notes.append(f"perplexity over {raw.get('perplexity_tokens')} tokens here, "
                         f"{reference.get('perplexity_tokens')} in the fp32 model "
                         f"({raw.get('perplexity_unscored', 0)} rows not scored)")
    elif "nll" not in raw and reference.get("perplexity"):
        notes.append(f"perplexity not measured: {raw.get('runtime')} gives no per-position logits here")
    return {
        "n": len(rows),
        **quality,
        "greedy_agreement": agree,
        "rouge_l_vs_fp32": vs_fp32,
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
        "notes": notes,
        "golden": {"rows": [{"prompt": p, "answer": g} for p, g, _ in golden],
                   "correct": sum(exact_match(a, g or "") for _, g, a in golden)},
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
