"""What `slmops demo` prints at the end: the fleet, the teacher against the distilled student, the
variants, the answers, each device's benchmark, a telemetry summary, and what to run next."""

from __future__ import annotations

import dataclasses
import shlex
from typing import Any

from controller.cli import bench_view
from controller.cli.devices_cmd import _rows as device_rows
from controller.cli.models_cmd import _compare_table, _fmt, human_bytes, variants_table
from controller.cli.output import console, table
from controller.demo.flow import DemoResult


def as_json(result: DemoResult) -> dict[str, Any]:
    data = dataclasses.asdict(result)
    data["next"] = next_steps(result)
    return data


def next_steps(result: DemoResult) -> list[str]:
    ctl = result.controller
    config = f"export SLMOPS_CONFIG={shlex.quote(str(ctl.get('config', '')))}"
    student = result.models.get("student", "NAME:VERSION")
    steps = [] if result.kept else [
        f"slmops controller start --data-dir {shlex.quote(str(ctl.get('data_dir', '')))} "
        f"--listen {ctl.get('listen', '127.0.0.1:7443')} &   # the same controller, its state kept"]
    steps += [config, "slmops devices list", f"slmops models compare {result.models.get('teacher', '')} "
              f"{student}", f"slmops models show {student}",
              "slmops rollout list", "slmops telemetry query --selector site=demo "
              "--metric inference_tokens_per_second --since 30m --step 1m"]
    if "adapter" in result.models:
        steps.append(f"slmops build {result.models['adapter']} --profiles cpu-x86-avx2-int8  "
                     "# then roll out the LoRA update: only the adapter travels")
    return steps


def print_report(result: DemoResult) -> None:
    console.rule("[bold]the demo's results[/bold]", align="left")
    table(f"fleet ({len(result.fleet)} devices)",
           ["id", "name", "status", "labels", "profile", "model", "hardware", "last seen"],
           device_rows(result.fleet))
    console.print("teacher against distilled student, as the recipe measured them on held-out data "
                  "(`slmops models compare`):", highlight=False)
    _compare_table({"baseline": result.models.get("teacher"), "metrics": "registered",
                    "models": result.comparison})
    variants_table(result.models.get("student", ""), result.variants)
    for name, answers in result.answers.items():
        table(f"{name}: questions through its OpenAI endpoint",
               ["prompt", "answer", "right", "ms", "tokens/s"],
               [[a["prompt"][:60], (a.get("answer") or a.get("error", ""))[:70],
                 "yes" if a["correct"] else "no", _fmt(a.get("latency_ms"), ".0f"),
                 _fmt(a.get("tokens_per_s"), ".0f")] for a in answers])
    table("each device's benchmark of its own model (`slmops devices show NAME`)",
           bench_view.COLUMNS, [bench_view.row(b) for b in result.benchmarks])
    table("telemetry over the demo (`slmops telemetry query`)",
           ["device", "requests", "tokens", "tokens/s", "latency p95 ms", "TTFT ms", "CPU %", "agent RSS"],
           [[t["device"], _fmt(t.get("requests"), ".0f"), _fmt(t.get("completion_tokens"), ".0f"),
             _fmt(t.get("tokens_per_s"), ".0f"), _fmt(t.get("latency_p95_ms"), ".0f"),
             _fmt(t.get("ttft_ms"), ".0f"), _fmt(t.get("cpu_percent"), ".0f"),
             human_bytes(t.get("agent_rss_bytes"))] for t in result.telemetry])
    table("time per stage", ["stage", "seconds"],
           [[f"{s.number}. {s.title}", f"{s.seconds:.1f}"] for s in result.stages] +
           [["total", f"{result.seconds:.1f}"]])
    if result.kept:
        console.print(f"[bold]still running[/bold] (--keep): the controller and three agents; their "
                      f"pids are in {result.data_dir}/demo.json, stop them with `kill PID`", highlight=False)
    else:
        console.print(f"everything the demo started has stopped; its state is in {result.data_dir}",
                      highlight=False)
    console.print("[bold]next[/bold]:", highlight=False)
    for line in next_steps(result):
        console.print(f"  {line}", highlight=False, soft_wrap=True)
