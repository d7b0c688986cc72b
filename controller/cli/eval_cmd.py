"""`slmops eval`: measure a registered model on a test file, as a job on the controller."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from controller.cli.follow import follow, interrupted, require_success
from controller.cli.output import CliError, console, emit, json_option
from controller.cli.pipeline_client import PipelineClient
from controller.pipeline.evaluate.metrics import METRICS
from controller.pipeline.evaluate.rows import SHAPES, read_rows
from controller.pipeline.jsonl import DataError


def check_data(path: Path) -> int:
    """The file holds evaluation rows; the error names the file, the line and the field."""
    try:
        rows = read_rows(path)
    except DataError as e:
        raise CliError(f"--data: {e}", "invalid_argument", 2) from None
    if not rows:
        raise CliError(f"--data: {path} holds no examples; each line is one of: {SHAPES}",
                       "invalid_argument", 2)
    return len(rows)


def _score(name: str, value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1%}" if name.startswith("exact_match") else f"{value:.3f}"


def _human(d: dict[str, Any]) -> None:
    m = d["metrics"]
    console.print(f"[bold]{d['model']}[/bold] on {d['eval_name']} ({m.get('n', '?')} examples, "
                  f"job {d['job']})", highlight=False)
    latency = m.get("latency_ms") or {}
    chosen = [name for name in m.get("metrics") or ["exact_match", "rouge_l"] if name in m]
    for key, value in (
        *((name.replace("_", " "), _score(name, m[name])) for name in chosen),
        ("latency", f"p50 {latency.get('p50', 0):.1f} ms, p95 {latency.get('p95', 0):.1f} ms"
         if latency else "-"),
        ("tokens/s", f"{m['tokens_per_s']:.0f}" if "tokens_per_s" in m else "-"),
        ("peak memory", f"{m['peak_memory_bytes'] / 2**20:.0f} MiB" if "peak_memory_bytes" in m
         else "-"),
    ):
        console.print(f"  {key:>12}  {value}", highlight=False)
    for intent, v in sorted((m.get("per_intent") or {}).items()):
        console.print(f"  {intent:>12}  {v.get('exact_match', 0):.1%} of {v.get('n', '?')}",
                      highlight=False)


@click.command("eval")
@click.argument("ref")
@click.option("--data", "data", required=True, type=click.Path(path_type=Path),
              help="test set, JSON lines: prompt/answer rows, conversations ({messages}) or {text}")
@click.option("--name", "eval_name", default="", help="what to call this evaluation "
              "(default: the data file's name)")
@click.option("--metrics", "metrics_text", default="", metavar="A,B",
              help="what to measure: " + ", ".join(m for m in METRICS if m != "judge")
                   + " (default: exact_match,rouge_l; the judge metric needs a recipe)")
@json_option
@click.pass_obj
def eval_(obj: dict, ref: str, data: Path, eval_name: str, metrics_text: str, as_json: bool) -> None:
    """Evaluate a registered model (NAME:VERSION) on a test set: the chosen metrics (overall,
    and per intent where rows have one), latency, tokens/s, peak memory. Runs as a job; waits
    for it."""
    metrics = [m.strip() for m in metrics_text.split(",") if m.strip()]
    unknown = [m for m in metrics if m not in METRICS or m == "judge"]
    if unknown:
        raise CliError(f"--metrics: {', '.join(unknown)} not one of "
                       f"{', '.join(m for m in METRICS if m != 'judge')}", "invalid_argument", 2)
    check_data(data)
    client = PipelineClient(obj["config"])
    job = client.evaluate(ref, eval_name, data.name, data, metrics)
    if not as_json:
        console.print(f"evaluating {job.target} as job {job.id}", highlight=False)
    try:
        job = follow(client, job.id, show=not as_json)
    except KeyboardInterrupt:
        raise interrupted(job.id) from None
    require_success(job)
    emit({"job": job.id, "model": job.target, "eval_name": eval_name or data.name,
          "metrics": json.loads(job.result_json or "{}")}, as_json, _human)
