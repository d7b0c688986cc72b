"""The on-device benchmark (agent/bench.py, `slmops-agent bench`) on a real tiny variant, in this
process and as the child process the daemon runs; and the arithmetic it reports with."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import variants

from agent.bench import (
    BenchError,
    BenchOptions,
    bench_in_child,
    load_prompts,
    percentile,
    run_benchmark,
)
from agent.daemon import bench_options
from agent.engine import VariantError
from agent.serve.metrics import ServeMetrics
from agent.telemetry.inference import InferenceSampler, histogram_quantile

ROOT = Path(__file__).parent.parent


@pytest.fixture
def labelled(tiny: variants.TinyVariants, tmp_path: Path) -> Path:
    """A variant with the slmops-variant.json that `slmops build` writes beside the files."""
    variant = variants.copy_variant(tiny.fp32, tmp_path / "support-fp32")
    (variant / "slmops-variant.json").write_text(json.dumps(
        {"model": "support:2", "profile": "cpu-fp32", "precision": "fp32"}))
    return variant


def test_report_has_every_figure_and_the_exact_variant(labelled: Path) -> None:
    report = run_benchmark(labelled, BenchOptions(n=4, max_tokens=12))
    assert report["load_time_s"] > 0
    for key in ("time_to_first_token_ms", "latency_ms"):
        figures = report[key]
        assert 0 < figures["p50"] <= figures["p95"] <= figures["max"]
    assert report["decode_tokens_per_s"] > 0 and report["tokens_per_s"] > 0
    assert report["completion_tokens_total"] >= 4
    assert report["peak_rss_bytes"] >= report["rss_before_load_bytes"] > 0
    variant = report["variant"]
    assert (variant["model"], variant["version"], variant["profile"], variant["precision"]) == (
        "support", "2", "cpu-fp32", "fp32")
    data = labelled / "model.onnx.data"
    assert variant["files"]["model.onnx.data"]["sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert len(variant["variant_sha256"]) == 64
    assert report["hardware"]["logical_cores"] >= 1
    assert isinstance(report["hardware"]["memory_total_bytes"], int)
    assert report["runtime"]["onnxruntime-genai"]
    assert report["settings"]["n"] == 4 and report["settings"]["chat_template"] is True
    json.dumps(report)  # JSON as it is


def test_a_changed_weights_file_changes_the_variant_digest(labelled: Path, tmp_path: Path) -> None:
    other = variants.copy_variant(labelled, tmp_path / "other")
    data = bytearray((other / "model.onnx.data").read_bytes())
    data[-1] ^= 1
    (other / "model.onnx.data").write_bytes(bytes(data))
    one = run_benchmark(labelled, BenchOptions(n=1, max_tokens=2, warmup=0))
    two = run_benchmark(other, BenchOptions(n=1, max_tokens=2, warmup=0))
    assert one["variant"]["variant_sha256"] != two["variant"]["variant_sha256"]


def test_cli_prints_json_from_a_prompts_file(tiny: variants.TinyVariants, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("\n".join(json.dumps({"prompt": r["prompt"]}) for r in tiny.test_rows[:3]) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "agent.bench_cmd", "--model", str(tiny.int4), "--prompts",
         str(prompts), "-n", "3", "--max-tokens", "8", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["settings"]["distinct_prompts"] == 3
    assert report["variant"]["precision"] == "int4"


def test_child_process_benchmark_measures_its_own_peak(tiny: variants.TinyVariants) -> None:
    report = asyncio.run(bench_in_child(tiny.fp32, BenchOptions(n=2, max_tokens=4)))
    assert report["variant"]["name"] == tiny.fp32.name
    assert report["peak_rss_bytes"] > 0


@pytest.mark.parametrize(("damage", "named"), [
    (lambda v: (v / "model.onnx.data").unlink(), "model.onnx.data"),
    (lambda v: (v / "genai_config.json").write_text("{not json"), "genai_config.json"),
    (lambda v: shutil.rmtree(v), "does not exist"),
])
def test_broken_variant_fails_naming_the_file(tiny: variants.TinyVariants, tmp_path: Path,
                                              damage, named: str) -> None:
    broken = variants.copy_variant(tiny.fp32, tmp_path / "broken")
    damage(broken)
    with pytest.raises(VariantError, match=named):
        run_benchmark(broken, BenchOptions(n=1, max_tokens=2))
    with pytest.raises(BenchError, match=named):
        asyncio.run(bench_in_child(broken, BenchOptions(n=1, max_tokens=2)))


@pytest.mark.parametrize(("text", "message"), [
    ('{"prompt": "ok"}\n{"prompt": \n', "prompts.jsonl:2: not JSON"),
    ('{"question": "no"}\n', 'prompts.jsonl:1: expected {"prompt"'),
    ('["x"]\n', "prompts.jsonl:1"),
    ("\n\n", "holds no prompts"),
])
def test_bad_prompts_file_names_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "prompts.jsonl"
    path.write_text(text)
    with pytest.raises(BenchError, match=message.replace("{", r"\{").replace("[", r"\[")):
        load_prompts(path)


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"n": 0}, "-n"), ({"max_tokens": 0}, "--max-tokens"), ({"warmup": -1}, "--warmup"),
    ({"prompts": ()}, "prompts"),
])
def test_bad_options_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(BenchError, match=f"^{flag}"):
        BenchOptions(**kwargs)


@pytest.mark.parametrize(("args", "expected"), [
    ("", (16, 64)), ('{"prompts": 3}', (3, 64)), ('{"prompts": 2, "max_tokens": 9}', (2, 9)),
])
def test_bench_command_arguments(args: str, expected: tuple[int, int]) -> None:
    options = bench_options(args)
    assert (options.n, options.max_tokens) == expected


@pytest.mark.parametrize(("args", "message"), [
    ("{", "args_json: not JSON"), ("[1]", "JSON object"), ('{"prompts": 0}', "args_json.prompts"),
    ('{"prompts": true}', "args_json.prompts"), ('{"fast": 1}', "unknown argument 'fast'"),
])
def test_bad_bench_command_arguments_name_the_field(args: str, message: str) -> None:
    with pytest.raises(BenchError, match=message):
        bench_options(args)


@pytest.mark.parametrize(("values", "q", "expected"), [
    ([5.0], 50, 5.0), ([1.0, 2.0, 3.0, 4.0], 50, 2.5), ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),
    ([3.0, 1.0, 2.0], 0, 1.0), ([3.0, 1.0, 2.0], 100, 3.0),
])
def test_percentile(values: list[float], q: float, expected: float) -> None:
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(("counts", "q", "expected"), [
    ([0, 0, 0, 0], 0.5, None),
    ([4, 0, 0, 0], 0.5, 0.5),  # in the first bucket [0, 1]
    ([0, 2, 2, 0], 0.5, 2.0),  # the boundary between (1, 2] and (2, 4]
    ([0, 0, 0, 3], 0.5, 4.0),  # above the last bound: the last bound
])
def test_histogram_quantile(counts: list[int], q: float, expected: float | None) -> None:
    result = histogram_quantile(q, (1.0, 2.0, 4.0), counts)
    assert result == (None if expected is None else pytest.approx(expected))


def test_inference_sampler_rebases_when_the_server_restarts() -> None:
    metrics: ServeMetrics | None = None
    sampler = InferenceSampler(lambda: metrics)
    assert sampler.sample() == []  # nothing served: no inference metrics
    metrics = ServeMetrics()
    for latency in (0.02, 0.03):
        metrics.request("grpc.Generate", 200, latency)
        metrics.generation(10, 5, 0.01, 0.01, cancelled=False)
    first = {v.metric: v.value for v in sampler.sample()}
    assert first["inference_requests"] == 2 and first["inference_completion_tokens"] == 10
    assert first["inference_tokens_per_second"] == pytest.approx(10 / 0.02)
    assert first["inference_latency_ms"] == pytest.approx(25.0)
    assert 10 < first["inference_latency_p50_ms"] <= 50
    metrics = ServeMetrics()  # a new server: fresh counters
    metrics.request("grpc.Generate", 400, 0.001, "invalid_argument")
    again = {v.metric: v.value for v in sampler.sample()}
    assert again["inference_requests"] == 1 and again["inference_errors"] == 1
    assert "inference_tokens_per_second" not in again
    assert not any(math.isnan(v) for v in again.values())
