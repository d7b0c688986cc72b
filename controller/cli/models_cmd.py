"""`slmops models`: the registry — versions, lineage, and the teacher/student comparison."""

from __future__ import annotations

import json
from typing import Any

import click

from controller.cli import bench_view, model_files_cmd, views
from controller.cli.output import CliError, console, emit, json_option, table
from controller.cli.pipeline_client import PipelineClient
from controller.pipeline.evaluate.compare import compare_rows
from protos import admin_pb2, pipeline_pb2


@click.group()
def models() -> None:
    """Registered models: list, show, compare; import, export, delete."""


models.add_command(model_files_cmd.import_)
models.add_command(model_files_cmd.export)
models.add_command(model_files_cmd.delete)


def human_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return f"{n:.0f}"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


@models.command("list")
@click.option("--name", default="", help="only the versions of this model")
@json_option
@click.pass_obj
def list_(obj: dict, name: str, as_json: bool) -> None:
    """Every model version: kind, parameters, size, accuracy, when it was made."""
    client = PipelineClient(obj["config"])
    response = client.call(client.pipeline.ListModels, pipeline_pb2.ListModelsRequest(name=name))
    data = {"models": [views.model(m) for m in response.models]}
    emit(data, as_json, lambda d: table(f"models ({len(d['models'])})",
         ["model", "kind", "params", "size", "exact match", "created", "job"],
         [[m["ref"], m["kind"], human_count(m["params"]), human_bytes(m["size_bytes"]),
           pct(m["metrics"].get("exact_match")), m["created"], m["job_id"] or "-"]
          for m in d["models"]]))


def _show(m: dict[str, Any]) -> None:
    console.print(f"[bold]{m['ref']}[/bold]  {m['kind']}  {human_count(m['params'])} params  "
                  f"{human_bytes(m['size_bytes'])}  created {m['created']}  job {m['job_id'] or '-'}",
                  highlight=False)
    console.print(f"  sha256 {m['sha256']}", highlight=False)
    if m.get("facts"):
        f = m["facts"]
        console.print(f"  architecture {f['architecture'] or '-'} ({f['model_type'] or '-'}), "
                      f"{human_count(f['params'])} params, vocabulary {f['vocab_size'] or '-'}, context "
                      f"{f['context_length'] or '-'}, chat template {'yes' if f['chat_template'] else 'no'}",
                      highlight=False)
    if m.get("source"):
        s = m["source"]
        where = s.get("hub_id") or s.get("file") or s.get("path") or "-"
        line = f"  source {s.get('format', '-')} {where}"
        if s.get("format") == "gguf":
            quant = ", ".join(f"{k} x{v}" for k, v in sorted(s.get("quantization", {}).items()))
            line += f"  sha256 {s.get('sha256', '-')}  quantization {quant or '-'}"
        console.print(line, highlight=False)
        for name, sha in sorted(s.get("weights", {}).items()):
            console.print(f"    weights {name} sha256 {sha}", highlight=False)
    for title, value in (("lineage", m["lineage"]), ("metrics", m["metrics"])):
        console.print(f"[bold]{title}[/bold]")
        console.print_json(json.dumps(value))
    for e in m["evaluations"]:
        console.print(f"[bold]evaluation[/bold] {e['eval_name']} ({e['created']}, job {e['job_id']})")
        console.print_json(json.dumps(e["metrics"]))
    if m["variants"]:
        variants_table(m["ref"], m["variants"])
    if m.get("benchmarks"):
        table(f"benchmarks on devices (latest {len(m['benchmarks'])})", bench_view.COLUMNS,
              [bench_view.row(b) for b in m["benchmarks"]])


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _fmt(x: Any, spec: str, suffix: str = "") -> str:
    return "-" if _number(x) is None else f"{x:{spec}}{suffix}"


def variants_table(ref: str, variants: list[dict[str, Any]]) -> None:
    """A model's device variants: what each profile got, how it measured, whether it may ship."""
    rows = []
    with_ppl = any(_number(v["metrics"].get("perplexity_ratio")) is not None for v in variants)
    for v in variants:
        mx = v["metrics"]
        status = "[green]passed[/green]" if v["status"] == "passed" else "[red]failed[/red]"
        metric = str(mx.get("task_metric") or "exact_match")
        value = mx.get("task_metric_value", mx.get("exact_match"))
        dropped = _number(mx.get("metric_drop"))  # points lost against fp32: shown as a change
        drop = -dropped if dropped is not None else mx.get("exact_match_delta")
        rows.append([v["profile"], v["precision"], human_bytes(v["size_bytes"]),
                     f"{metric.replace('_', ' ')} {pct(_number(value))}", _fmt(drop, "+.1f", " pts"),
                     pct(_number(mx.get("greedy_agreement"))), pct(_number(mx.get("rouge_l_vs_fp32")))]
                    + ([_fmt(mx.get("perplexity_ratio"), ".3f")] if with_ppl else [])
                    + [_fmt(mx.get("tokens_per_s"), ".0f"), human_bytes(_number(mx.get("peak_memory_bytes"))),
                       status, v["reason"] or "-"])
    table(f"variants of {ref} ({len(variants)})",
          ["profile", "precision", "size", "task metric", "vs fp32", "agreement", "ROUGE-L vs fp32"]
          + (["ppl ratio"] if with_ppl else []) + ["tokens/s", "peak memory", "status", "reason"], rows)
    notes = sorted({n for v in variants for n in v["metrics"].get("notes", [])})
    for note in notes:
        console.print(f"  note: {note}", highlight=False)


@models.command("show")
@click.argument("ref")
@json_option
@click.pass_obj
def show(obj: dict, ref: str, as_json: bool) -> None:
    """One version (NAME, NAME:VERSION or NAME:latest): lineage, metrics, evaluations, its
    device variants (profile, size, accuracy against fp32, tokens/s, passed or failed and why)
    and the benchmarks devices ran on it."""
    client = PipelineClient(obj["config"])
    m = client.call(client.pipeline.GetModel, pipeline_pb2.GetModelRequest(ref=ref)).model
    view = views.model(m)
    facts, source = view["lineage"].get("model"), view["lineage"].get("source")
    view["facts"] = facts if isinstance(facts, dict) else None  # imported models: what the files say
    view["source"] = source if isinstance(source, dict) else None
    found = client.call(client.stub.ListBenchmarks,
                        admin_pb2.ListBenchmarksRequest(model=view["ref"], limit=20))
    view["benchmarks"] = [bench_view.benchmark(b) for b in found.benchmarks]
    emit(view, as_json, _show)


def _metrics_of(m: dict[str, Any], evaluation: str) -> dict[str, Any]:
    if not evaluation:
        return dict(m["metrics"])
    found = [e for e in m["evaluations"] if e["eval_name"] == evaluation]
    if not found:
        raise CliError(f"{m['ref']} has no evaluation named {evaluation!r}; run `slmops eval "
                       f"{m['ref']} --data FILE --name {evaluation}`", "not_found")
    return dict(found[-1]["metrics"])


def comparison(models: list[dict[str, Any]], metrics: list[dict[str, Any]],
               metric: str | None = None) -> list[dict[str, Any]]:
    """The seed's table for registered models (the first is the baseline, usually the teacher):
    controller.pipeline.evaluate.compare's rows, with retention and parameters in percent."""
    records = [{"model": m["ref"], "kind": m["kind"], "params": m["params"], "size_bytes": m["size_bytes"],
                "metrics": found} for m, found in zip(models, metrics, strict=True)]
    try:
        rows = compare_rows(records, metric=metric)
    except ValueError as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    for row in rows:
        retention, ratio = row.pop("retention"), row.pop("params_ratio")
        row["retention_pct"] = None if retention is None else 100.0 * retention
        row["params_pct"] = None if ratio is None else 100.0 * ratio
    return rows


def _score(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in ("exact_match", "exact_match_relaxed", "rouge_l", "judge"):
        return pct(value)
    return f"{value:.2f}"


def _compare_table(d: dict[str, Any]) -> None:
    def fmt(x: float | None, spec: str, suffix: str = "") -> str:
        return "-" if x is None else f"{x:{spec}}{suffix}"

    rows = [[r["model"] + ("" if r["same_data_as_baseline"] else " *"), human_count(r["params"]),
             fmt(r["params_pct"], ".1f", "%"), human_bytes(r["peak_memory_bytes"]),
             fmt(r["latency_p50_ms"], ".1f"), fmt(r["latency_p95_ms"], ".1f"),
             fmt(r["tokens_per_s"], ".0f"), _score(r["metric"], r["accuracy"]),
             fmt(r["retention_pct"], ".1f", "%"), fmt(r["speedup"], ".2f", "x")] for r in d["models"]]
    metric = d["models"][0]["metric"].replace("_", " ") if d["models"] else "accuracy"
    table(f"compared with {d['baseline']} ({d['metrics']})",
          ["model", "params", "params %", "peak memory", "p50 ms", "p95 ms", "tokens/s",
           metric, "retention", "speed-up"], rows)
    if not all(r["same_data_as_baseline"] for r in d["models"]):
        console.print("* measured on other data than the baseline; its retention is not a like-"
                      "for-like comparison", highlight=False)


@models.command("compare")
@click.argument("refs", nargs=-1, required=True)
@click.option("--evaluation", default="", help="compare the results of `slmops eval --name NAME` "
              "instead of the metrics each model was registered with")
@click.option("--metric", default=None, help="the task metric compared (exact_match, rouge_l, bleu, chrf, "
              "perplexity, judge, ...); default: the first one every model has")
@json_option
@click.pass_obj
def compare(obj: dict, refs: tuple[str, ...], evaluation: str, metric: str | None, as_json: bool) -> None:
    """Parameters, memory, latency, accuracy and throughput side by side; retention % and
    speed-up against the first model (the teacher)."""
    if len(refs) < 2:
        raise CliError("name at least two models: the baseline (teacher) first", "invalid_argument", 2)
    client = PipelineClient(obj["config"])
    found = [views.model(client.call(client.pipeline.GetModel, pipeline_pb2.GetModelRequest(ref=r)).model)
             for r in refs]
    rows = comparison(found, [_metrics_of(m, evaluation) for m in found], metric)
    emit({"baseline": rows[0]["model"], "metrics": evaluation or "registered", "models": rows},
         as_json, _compare_table)


@models.command("verify")
@click.option("--sizes-only", is_flag=True,
              help="check only the sizes of the registry's files (fast); by default every byte "
                   "of every variant file and every blob is hashed")
@json_option
@click.pass_obj
def verify(obj: dict, sizes_only: bool, as_json: bool) -> None:
    """Check every variant's files against the size and sha256 recorded when it was built, and
    every stored blob against its name. Exits 1 if anything is damaged or missing, saying how
    to repair each."""
    client = PipelineClient(obj["config"])
    r = client.call(client.pipeline.VerifyModels, pipeline_pb2.VerifyModelsRequest(sizes_only=sizes_only))
    damaged = [{"kind": d.kind, "path": d.path, "variant": d.variant, "file": d.file,
                "problem": d.problem, "repair": d.repair} for d in r.damaged]
    data = {"ok": not damaged, "sizes_only": sizes_only, "variants": r.variants, "files": r.files,
            "blobs": r.blobs, "damaged": damaged}

    def human(d: dict[str, Any]) -> None:
        what = f"{d['variants']} variants ({d['files']} files)" + (
            "" if d["sizes_only"] else f" and {d['blobs']} blobs")
        if d["ok"]:
            console.print(f"[green]ok[/green]: {what} match what was recorded", highlight=False)
            return
        table(f"damaged or missing ({len(d['damaged'])}) of {what}", ["kind", "file", "problem", "repair"],
              [[x["kind"], x["path"], x["problem"], x["repair"]] for x in d["damaged"]])

    emit(data, as_json, human)
    if damaged:
        raise SystemExit(1)
