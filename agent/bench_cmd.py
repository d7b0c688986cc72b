"""`slmops-agent bench`: benchmark a model variant on this device (agent/bench.py).

Also runnable as ``python -m agent.bench_cmd``: the daemon benchmarks in such a child process,
so the peak RSS is the model's, not the daemon's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from agent.bench import DEFAULT_PROMPTS, BenchError, BenchOptions, load_prompts, run_benchmark

EXIT_USAGE = 2


def _human(report: dict[str, Any]) -> None:
    v, first, latency = report["variant"], report["time_to_first_token_ms"], report["latency_ms"]
    peak = report["peak_rss_bytes"]
    lines = [
        ("variant", f"{v['name']} ({v['model'] or '?'}:{v['version'] or '?'}, "
                    f"{v['profile'] or 'no profile'}, {v['precision']}, "
                    f"{v['size_bytes'] / 2**20:.1f} MiB)"),
        ("sha256", v["variant_sha256"]),
        ("cpu", f"{report['hardware'].get('cpu_model', '?')} ({report['hardware'].get('arch', '?')})"),
        ("load", f"{report['load_time_s']:.3f} s"),
        ("first token", f"p50 {first['p50']:.1f} ms, p95 {first['p95']:.1f} ms" if first else "-"),
        ("latency", f"p50 {latency['p50']:.1f} ms, p95 {latency['p95']:.1f} ms over "
                    f"{report['settings']['n']} prompts"),
        ("decode", f"{report['decode_tokens_per_s']} tokens/s"),
        ("peak rss", f"{peak / 2**20:.1f} MiB" if peak else "-"),
    ]
    for key, value in lines:
        click.echo(f"{key:>12}  {value}")


@click.command()
@click.option("--model", "model_dir", type=click.Path(path_type=Path), required=True,
              help="the variant directory (genai_config.json, model.onnx, tokenizer.json)")
@click.option("--prompts", "prompts_file", type=click.Path(path_type=Path), default=None,
              help='JSONL file of {"prompt": ...}; default: a built-in list')
@click.option("-n", "n", type=int, default=16, show_default=True, help="prompts to time")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="tokens per answer")
@click.option("--warmup", type=int, default=1, show_default=True, help="untimed runs first")
@click.option("--threads", type=int, default=None, help="onnxruntime threads (default: one per core)")
@click.option("--raw", is_flag=True, help="send prompts as they are, without the chat template")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def bench(model_dir: Path, prompts_file: Path | None, n: int, max_tokens: int, warmup: int,
          threads: int | None, raw: bool, as_json: bool) -> None:
    """Benchmark a model variant: load time, first token, tokens/s, latency, peak memory."""
    from agent.engine.variant import VariantError

    try:
        prompts = load_prompts(prompts_file) if prompts_file else DEFAULT_PROMPTS
        options = BenchOptions(prompts=prompts, n=n, max_tokens=max_tokens, warmup=warmup,
                               threads=threads, chat=not raw)
        report = run_benchmark(model_dir, options)
    except (BenchError, VariantError) as e:
        if as_json:
            click.echo(json.dumps({"error": str(e)}))
        else:
            click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _human(report)


if __name__ == "__main__":
    bench()
