"""The on-device benchmark of one model variant: load time, time to first token, decode
tokens/s, p50/p95 latency over N prompts, peak RSS, and exactly which variant on which hardware.

``run_benchmark`` measures in this process. Peak RSS is the process's high-water mark
(``VmHWM``), so it means "what serving this model needs" only in a process that did little
else: the agent daemon runs ``bench_in_child`` (``python -m agent.bench_cmd``) instead, which
also keeps a crash in the runtime away from the daemon.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from agent import __version__

SCHEMA = 1
VARIANT_META = "slmops-variant.json"  # written by `slmops build` beside the genai files
MAX_PROMPTS_FILE_BYTES = 16 * 1024 * 1024
DEFAULT_PROMPTS = (
    "How do I reset my password?",
    "My order has not arrived yet. What can I do?",
    "Can I change the delivery address of an order?",
    "What is your refund policy?",
    "How do I cancel my subscription?",
    "The app crashes when I open it. Any ideas?",
    "Do you ship to Canada?",
    "How can I contact a human agent?",
)


class BenchError(ValueError):
    """The benchmark can't run as asked; the message names the file or option."""


@dataclass(frozen=True)
class BenchOptions:
    prompts: tuple[str, ...] = DEFAULT_PROMPTS  # cycled until ``n`` are timed
    n: int = 16  # prompts timed
    max_tokens: int = 64  # tokens per answer at most (greedy decoding)
    warmup: int = 1  # untimed generations first (first-call allocations)
    threads: int | None = None  # the runtime's intra-op threads; None = one per core
    chat: bool = True  # format prompts with the model's chat template when it has one

    def __post_init__(self) -> None:
        for flag, value, low, high in (("-n", self.n, 1, 10_000), ("--max-tokens", self.max_tokens,
                                                                     1, 100_000),
                                       ("--warmup", self.warmup, 0, 100)):
            if not low <= value <= high:
                raise BenchError(f"{flag}: {value} is out of range; allowed {low}..{high}")
        if not self.prompts:
            raise BenchError("prompts: the list is empty; give at least one prompt")


def load_prompts(path: Path) -> tuple[str, ...]:
    """Prompts from a JSONL file of {"prompt": "..."} objects (blank lines skipped)."""
    try:
        if path.stat().st_size > MAX_PROMPTS_FILE_BYTES:
            raise BenchError(f"{path}: larger than {MAX_PROMPTS_FILE_BYTES} bytes; use fewer prompts")
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{path}: can't be read ({e})") from None
    prompts = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BenchError(f"{path}:{number}: not JSON ({e.msg})") from None
        prompt = row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(prompt, str) or not prompt:
            raise BenchError(f'{path}:{number}: expected {{"prompt": "non-empty text"}}')
        prompts.append(prompt)
    if not prompts:
        raise BenchError(f"{path}: holds no prompts; one JSON object per line, "
                         '{"prompt": "..."}')
    return tuple(prompts)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between the closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def memory_status() -> dict[str, int]:
    """VmRSS and VmHWM (peak) of this process in bytes; {} where /proc is absent."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(rest.split()[0]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    if "VmHWM" not in out:
        try:
            import resource  # Unix only

            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out["VmHWM"] = peak if sys.platform == "darwin" else peak * 1024
        except (ImportError, OSError):
            pass
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def variant_identity(info: Any) -> dict[str, Any]:
    """Which variant exactly: its files' sha256 and, from slmops-variant.json, the model, version
    and profile it was built as. ``variant_sha256`` digests the "name sha256" lines of every file."""
    root = Path(info.path)
    hashes = {name: sha256_file(root / name) for name in sorted(info.files)}
    meta: dict[str, Any] = {}
    if (root / VARIANT_META).is_file():
        try:
            loaded = json.loads((root / VARIANT_META).read_text(encoding="utf-8"))
            meta = loaded if isinstance(loaded, dict) else {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            meta = {}
    lines = "".join(f"{name} {digest}\n" for name, digest in hashes.items())

    def text(key: str) -> str:
        return str(meta[key]) if isinstance(meta.get(key), str | int) else ""

    model, version = text("model"), text("version")
    if not version and ":" in model:  # `slmops build` writes the registry ref, NAME:VERSION
        model, _, version = model.rpartition(":")
    return {
        "path": str(root.resolve()), "name": info.name, "model": model, "version": version,
        "profile": text("profile"), "precision": text("precision") or info.precision,
        "context_length": info.context_length, "size_bytes": info.size_bytes,
        "files": {name: {"size": info.files[name], "sha256": hashes[name]} for name in hashes},
        "variant_sha256": hashlib.sha256(lines.encode()).hexdigest(),
    }


def hardware_dict(hardware: Any) -> dict[str, Any]:
    """The Hardware message with snake_case keys and numbers as numbers (MessageToDict writes
    64-bit integers as strings)."""
    data = json_format.MessageToDict(hardware, preserving_proto_field_name=True)
    for key in ("memory_total_bytes", "disk_total_bytes", "disk_free_bytes"):
        data[key] = int(data.get(key, 0))
    for accelerator in data.get("accelerators", []):
        accelerator["memory_bytes"] = int(accelerator.get("memory_bytes", 0))
    return data


def runtime_versions() -> dict[str, str]:
    out = {"agent": __version__, "python": platform.python_version()}
    for dist in ("onnxruntime-genai", "onnxruntime"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = ""
    return out


def _one(engine: Any, prompt: str, params: Any) -> tuple[float, float, int]:
    """(time to first token s, latency s, completion tokens) of one generation."""
    start = time.perf_counter()
    first = 0.0
    stream = engine.stream(prompt, params)
    for _piece in stream:
        if not first:
            first = time.perf_counter() - start
    total = time.perf_counter() - start
    tokens = stream.completion_tokens
    return (first or total) if tokens else 0.0, total, tokens


def _ms(values: Sequence[float]) -> dict[str, float]:
    return {"p50": round(percentile(values, 50) * 1000, 3),
            "p95": round(percentile(values, 95) * 1000, 3),
            "mean": round(sum(values) / len(values) * 1000, 3),
            "max": round(max(values) * 1000, 3)}


def run_benchmark(variant_dir: Path, options: BenchOptions, data_dir: Path | None = None
                  ) -> dict[str, Any]:
    """Load the variant, time ``options.n`` greedy generations, return the report (JSON-able).
    Raises VariantError (agent.engine) for a variant that does not load, naming the file."""
    from agent.engine.engine import Engine  # the runtime is imported only when benchmarking
    from agent.engine.sampling import SamplingParams
    from agent.hardware import detect_hardware

    before = memory_status()
    started = time.perf_counter()
    engine = Engine.load(variant_dir, threads=options.threads)
    load_time = time.perf_counter() - started
    try:
        info = engine.info
        use_chat = options.chat and info.chat_template is not None
        prompts = [engine.chat_prompt([{"role": "user", "content": p}]) if use_chat else p
                   for p in options.prompts]
        params = SamplingParams(max_tokens=options.max_tokens, temperature=0.0)
        for i in range(options.warmup):
            _one(engine, prompts[i % len(prompts)], params)
        runs = [_one(engine, prompts[i % len(prompts)], params) for i in range(options.n)]
        prompt_tokens = [len(engine.encode(prompts[i % len(prompts)])) for i in range(options.n)]
    finally:
        engine.close()
    after = memory_status()
    first = [r[0] for r in runs if r[2]]
    latency = [r[1] for r in runs]
    decode_tokens = sum(max(0, r[2] - 1) for r in runs)
    decode_time = sum(r[1] - r[0] for r in runs if r[2] > 1)
    total_tokens = sum(r[2] for r in runs)
    return {
        "schema": SCHEMA,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "variant": variant_identity(info),
        "hardware": hardware_dict(detect_hardware(data_dir or Path(variant_dir))),
        "runtime": runtime_versions(),
        "settings": {**{k: v for k, v in asdict(options).items() if k != "prompts"},
                     "distinct_prompts": len(options.prompts), "chat_template": use_chat,
                     "greedy": True},
        "load_time_s": round(load_time, 4),
        "time_to_first_token_ms": _ms(first) if first else None,
        "latency_ms": _ms(latency),
        "decode_tokens_per_s": round(decode_tokens / decode_time, 2) if decode_time > 0 else None,
        "tokens_per_s": round(total_tokens / sum(latency), 2) if sum(latency) > 0 else None,
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1),
        "completion_tokens_total": total_tokens,
        "rss_before_load_bytes": before.get("VmRSS"),
        "peak_rss_bytes": after.get("VmHWM"),
    }


def child_command(variant_dir: Path, options: BenchOptions) -> list[str]:
    """The command line of ``bench_in_child``: the agent's own bench CLI, printing JSON."""
    cmd = [sys.executable, "-m", "agent.bench_cmd", "--model", str(variant_dir), "-n",
           str(options.n), "--max-tokens", str(options.max_tokens), "--warmup",
           str(options.warmup), "--json"]
    if options.threads:
        cmd += ["--threads", str(options.threads)]
    if not options.chat:
        cmd.append("--raw")
    return cmd


def parse_child_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    """The report from the child's stdout, or BenchError with the child's own message."""
    try:
        data = json.loads(stdout) if stdout.strip() else None
    except json.JSONDecodeError:
        data = None
    if isinstance(data, dict) and returncode == 0 and "error" not in data:
        return data
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        raise BenchError(str(error.get("message", error) if isinstance(error, dict) else error))
    tail = (stderr.strip().splitlines() or ["no output"])[-1]
    raise BenchError(f"the benchmark process failed (exit code {returncode}): {tail}")


async def bench_in_child(variant_dir: Path, options: BenchOptions, timeout_s: float = 1800
                         ) -> dict[str, Any]:
    """Run the benchmark in a fresh process (see the module's docstring). Cancelling this, or
    the timeout, kills the child."""
    process = await asyncio.create_subprocess_exec(
        *child_command(variant_dir, options), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        raise BenchError(f"the benchmark took longer than {timeout_s:g} s and was stopped; "
                         "use fewer prompts or max tokens") from None
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return parse_child_output(stdout.decode(errors="replace"), stderr.decode(errors="replace"),
                              process.returncode or 0)
