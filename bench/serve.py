"""Serving benchmark: one ~80 M-parameter Llama, four ways to run it, three precisions.

Builds a Llama from a config (12 layers, hidden 768, about 77 M parameters with the support
task's tokenizer of about 900 tokens; random weights: speed does not depend on them) and its
device variants the way ``slmops build`` does (profiles cpu-fp32, cpu-x86-avx2-int8,
cpu-x86-avx512-int4: the onnxruntime-genai model builder, int8 through onnxruntime's dynamic
quantizer), plus optimum's ONNX export. Then, each in a process of its own, greedy decoding of
the same prompts:

- PyTorch fp32 eager ``generate``;
- optimum's ``ORTModelForCausalLM.generate`` (fp32 export);
- the raw onnxruntime-genai loop, per variant;
- the agent's OpenAI endpoint (``slmops-agent serve``), per variant, through the ``openai``
  client with streaming;

with decode tokens/s, time to first token, peak RSS and size on disk. The last two run on the
agent as a device installs it: a venv with ``pip install .`` (no extras; kept in ``--work``,
remade when pyproject.toml changes), which takes the newest onnxruntime-genai and onnxruntime
rather than the controller's builder pin, with this checkout's code on PYTHONPATH. It also
measures this machine's memory read bandwidth (every core reading at once, as a decode step
does) and divides it by each variant's weight bytes (the bandwidth bound on tokens/s), the
agent's install size (that venv's site-packages less a bare venv's), and the agent's idle RSS
before a model is loaded.

The raw loop and the endpoint run in alternating pairs (``--pairs``, 5), each raw run just after
a bandwidth reading: this VM's speed and memory bandwidth drift by 30 % within minutes, so each
run is judged against the machine as it was then, and the targets on the median pair.

    .venv/bin/python -m bench.serve [--tokens 128] [--prompts 5] [--pairs 5] [--work DIR] [--out bench/out]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.engine.engine import usable_cores
from bench.controller_proc import vm_hwm_bytes
from bench.serve_runners import summary

REPO = Path(__file__).resolve().parent.parent
SIZE_80M = {"hidden_size": 768, "num_layers": 12, "num_heads": 12, "num_kv_heads": 4,
            "intermediate_size": 2048, "max_position_embeddings": 1024}
PRECISIONS = ("fp32", "int8", "int4")
PROFILES = {"fp32": "cpu-fp32", "int8": "cpu-x86-avx2-int8", "int4": "cpu-x86-avx512-int4"}
PROMPTS = ("Where is my order #48213? Thanks.", "How much for 4 mugs at $12 each?",
           "Are you open on Sunday?", "Please reset the password for lena@example.com.",
           "I want a refund for order #55120, it arrived broken.", "Cancel subscription AC-104233 please.",
           "Has order #90017 shipped yet?", "When do you open on Friday?")
TARGETS = ("endpoint >= 90 % of the raw loop's tokens/s", "int4 >= 10x PyTorch eager",
           "int4 >= 60 % of the bandwidth bound", "int4 >= 75 % smaller than fp32",
           "agent install <= 300 MB", "agent idle RSS <= 100 MB")


def log(message: str) -> None:
    print(f"[{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- building ---------------------------------------------------------------------------------

def build_all(work: Path) -> dict[str, Path]:
    from controller.pipeline.chat import prompt_text
    from controller.pipeline.modelkit.llama import build_model
    from controller.pipeline.modelkit.tokenizer import train_tokenizer
    from controller.pipeline.task.support import ALL_INTENTS, generate

    paths = {"model": work / "model", "optimum-fp32": work / "optimum-fp32"}
    paths.update({f"variant-{p}": work / f"variant-{p}" for p in PRECISIONS})
    if not (paths["model"] / "config.json").is_file():
        log("training the tokenizer and building the ~80 M Llama")
        rows = generate("train", 3000, seed=0, intents=ALL_INTENTS)
        train_tokenizer([prompt_text(r["prompt"]) + r["answer"] for r in rows], work / "tokenizer", 2048)
        build_model(SIZE_80M, work / "tokenizer", paths["model"], seed=0)
    from controller.build.builder import build_variant
    from controller.build.profiles import builtin_profiles

    profiles = builtin_profiles()
    for precision in PRECISIONS:
        out = paths[f"variant-{precision}"]
        if not (out / "genai_config.json").is_file():
            log(f"building the {precision} variant ({PROFILES[precision]}, as `slmops build` does)")
            build_variant(paths["model"], profiles.get(PROFILES[precision]), out, scratch=work / "scratch")
    if not (paths["optimum-fp32"] / "model.onnx").is_file():
        log("exporting with optimum (ORTModelForCausalLM, fp32)")
        subprocess.run([sys.executable, "-c", (
            "import sys; from optimum.onnxruntime import ORTModelForCausalLM; "
            "from transformers import AutoTokenizer; "
            "m = ORTModelForCausalLM.from_pretrained(sys.argv[1], export=True, use_cache=True); "
            "m.save_pretrained(sys.argv[2]); "
            "AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])"),
            str(paths["model"]), str(paths["optimum-fp32"])], check=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return paths


def weight_bytes(variant: Path) -> int:
    return sum(f.stat().st_size for f in variant.iterdir() if f.name.startswith("model.onnx"))


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --- measuring --------------------------------------------------------------------------------

# --- the agent as a device installs it -------------------------------------------------------

def agent_venv(work: Path) -> Path:
    """A venv with ``pip install .`` (the agent alone), made once per pyproject.toml; the bare
    venv's site-packages size is kept beside it, for the install size."""
    venv = work / "agent-venv"
    record = venv / "slmops-bench.json"
    stamp = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if record.is_file() and json.loads(record.read_text()).get("pyproject") == stamp:
        return venv
    log("installing the agent into a fresh venv (`pip install .`, as a device does)")
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bare = dir_bytes(_site_packages(venv))
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check",
                    str(REPO)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record.write_text(json.dumps({"pyproject": stamp, "bare_bytes": bare}))
    return venv


def _site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python*/site-packages"))


def checkout_env() -> dict[str, str]:
    """The environment for the agent venv's processes: this checkout's code before the installed
    copy, so a rerun measures the code as it is now."""
    return {**os.environ, "PYTHONPATH": str(REPO)}


def run_child(kind: str, path: Path, prompts_file: Path, tokens: int,
              python: Path = Path(sys.executable)) -> dict[str, Any]:
    out = subprocess.run([str(python), "-m", "bench.serve_runners", kind, str(path),
                          "--prompts-file", str(prompts_file), "--tokens", str(tokens)],
                         cwd=REPO, capture_output=True, text=True, env=checkout_env())
    if out.returncode:
        raise RuntimeError(f"{kind} runner failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60,
                  empty: bool = False) -> None:
    """Until /healthz answers 200 (or, with ``empty``, 503 "no_model": up, nothing loaded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"slmops-agent serve exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return
        except urllib.error.HTTPError as e:
            if empty and e.code == 503:
                return
            time.sleep(0.1)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("slmops-agent serve did not become healthy")


def run_endpoint(bin_dir: Path, variant: Path, prompts: list[str], tokens: int) -> dict[str, Any]:
    """The agent's OpenAI endpoint (``slmops-agent serve`` of ``bin_dir``) in its own process,
    driven by the official client."""
    from openai import OpenAI

    port = _free_port()
    start = time.perf_counter()
    process = subprocess.Popen([str(bin_dir / "slmops-agent"), "serve", "--model", str(variant),
                                "--listen", f"127.0.0.1:{port}"], env=checkout_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, process)
        load_s = time.perf_counter() - start
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        model = client.models.list().data[0].id
        runs = []
        for prompt in [prompts[0], *prompts]:  # the first run warms up and is not counted
            t0 = time.perf_counter()
            first = None
            usage = None
            stream = client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": prompt}], max_tokens=tokens,
                temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"min_tokens": tokens})
            for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter()
                if chunk.usage is not None:
                    usage = chunk.usage
            end = time.perf_counter()
            produced = usage.completion_tokens if usage else 0
            # The first chunk with text: a token that ends inside a UTF-8 character sends nothing.
            first = first or end
            runs.append((first - t0, max(end - first, 1e-9), max(produced - 1, 0)))
        return summary(load_s, runs[1:], vm_hwm_bytes(process.pid))
    finally:
        process.terminate()
        process.wait(timeout=30)


def idle_rss_mb(bin_dir: Path) -> float:
    """RSS of ``slmops-agent serve`` with no model loaded, once it answers /healthz."""
    port = _free_port()
    process = subprocess.Popen([str(bin_dir / "slmops-agent"), "serve", "--listen", f"127.0.0.1:{port}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, process, empty=True)
        time.sleep(1)
        return round(vm_hwm_bytes(process.pid, "VmRSS") / 2**20, 1)
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(bin_dir: Path, variant: Path) -> bool:
    """Whether ``slmops-agent serve`` of ``bin_dir`` answers a chat request on ``variant``."""
    from openai import OpenAI

    port = _free_port()
    process = subprocess.Popen([str(bin_dir / "slmops-agent"), "serve", "--model", str(variant),
                                "--listen", f"127.0.0.1:{port}", "--grpc-listen", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_healthy(port, process)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")
        reply = client.chat.completions.create(model=client.models.list().data[0].id, max_tokens=8,
                                               messages=[{"role": "user", "content": "hi"}])
        return reply.usage.completion_tokens > 0
    finally:
        process.terminate()
        process.wait(timeout=30)


def _read_timed(barrier: Any, times: Any, size_mb: int, repeats: int) -> None:
    import numpy as np

    data = np.ones(size_mb * 2**20 // 8, dtype=np.int64)
    data.sum()  # fault the pages in
    mine = []
    for _ in range(repeats):
        barrier.wait()
        t0 = time.perf_counter()
        data.sum()
        mine.append(time.perf_counter() - t0)
    times.put(mine)


def memory_read_gb_s(cores: int, size_mb: int = 512, repeats: int = 5, trials: int = 3) -> float:
    """Memory read bandwidth with ``cores`` readers at once, as a decode step reads its weights
    with one onnxruntime thread per core: each process sums its own ``size_mb`` array of int64s
    (one pass), all starting together; the best round's bytes over its slowest reader, best of
    ``trials`` sets of fresh processes (one set alone read 45-67 GB/s on this VM)."""
    return max(_read_trial(cores, size_mb, repeats) for _ in range(trials))


def _read_trial(cores: int, size_mb: int, repeats: int) -> float:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, times = context.Barrier(cores), context.Queue()
    readers = [context.Process(target=_read_timed, args=(barrier, times, size_mb, repeats))
               for _ in range(cores)]
    for reader in readers:
        reader.start()
    per_reader = [times.get(timeout=300) for _ in range(cores)]
    for reader in readers:
        reader.join()
    slowest = min(max(round_) for round_ in zip(*per_reader, strict=True))
    return cores * size_mb * 2**20 / slowest / 1e9


def agent_install(venv: Path, variant: Path) -> dict[str, Any]:
    """The agent's install as :func:`agent_venv` made it, with its own code (not the checkout's):
    its site-packages size less the bare venv's, its idle RSS, the onnxruntime-genai and
    onnxruntime versions pip chose, and whether it serves ``variant`` (built by the controller's
    builder)."""
    bare = json.loads((venv / "slmops-bench.json").read_text())["bare_bytes"]
    versions = subprocess.run([str(venv / "bin" / "python"), "-c",
                               "import onnxruntime as ort, onnxruntime_genai as og; "
                               "print(og.__version__, ort.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    return {"size_mb": round((dir_bytes(_site_packages(venv)) - bare) / 2**20, 1), "genai": versions[0],
            "onnxruntime": versions[1], "idle_rss_mb": idle_rss_mb(venv / "bin"),
            "serves_variant": _answers(venv / "bin", variant)}


# --- report -----------------------------------------------------------------------------------

def report(result: dict[str, Any]) -> str:
    rows = result["rows"]
    raw = {r["precision"]: r for r in rows if r["runtime"] == "onnxruntime-genai loop"}
    eager = next(r for r in rows if r["runtime"] == "PyTorch eager")
    lines = [
        f"### Run of {result['date']} UTC",
        "",
        f"Machine: {result['machine']}. Model: Llama from config, {result['params'] / 1e6:.1f} M parameters "
        f"(12 layers, hidden 768, vocab {result['vocab']}, random weights); greedy, {result['tokens']} "
        f"new tokens for each of {result['prompts']} prompts, end-of-sequence suppressed; each runtime in "
        f"a process of its own; onnxruntime with {result['cores']} threads (one per core). The raw "
        f"loop and the endpoint run on the agent's own install (onnxruntime-genai "
        f"{result['agent_install']['genai']}, onnxruntime {result['agent_install']['onnxruntime']}); "
        f"PyTorch and optimum in the controller's venv.",
        "",
        "| runtime | precision | size MB | load s | TTFT p50 ms | decode tok/s | whole-request tok/s | "
        "peak RSS MB | x eager (decode) | decode % of bandwidth bound |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = r.get("bound_tok_s")
        share = f"{100 * r['decode_tok_s'] / bound:.0f} % of {bound:.0f}" if bound else ""
        lines.append(f"| {r['runtime']} | {r['precision']} | {r['size_mb']:.1f} | {r['load_s']:.2f} | "
                     f"{r['ttft_ms']:.1f} | {r['decode_tok_s']:.1f} | {r['e2e_tok_s']:.1f} | "
                     f"{r['peak_rss_mb']:.0f} | "
                     f"{r['decode_tok_s'] / eager['decode_tok_s']:.1f} | {share} |")
    checks = []
    pairs = result.get("pairs") or {}
    for p in PRECISIONS:
        if pairs.get(p):
            shares = [100 * r["endpoint_share"] for r in pairs[p]]
            checks.append(f"endpoint / raw loop, {p}: median {statistics.median(shares):.0f} % of its "
                          f"tokens/s, whole requests, over {len(shares)} alternating pairs "
                          f"({', '.join(f'{x:.0f}' for x in shares)} %) (target >= 90 %)")
    if "int4" in raw:
        i4 = raw["int4"]
        if pairs.get("int4"):
            times = [r["raw"]["decode_tok_s"] / eager["decode_tok_s"] for r in pairs["int4"]]
            checks.append(f"int4 raw loop / PyTorch eager: median {statistics.median(times):.1f}x over the "
                          f"pairs ({', '.join(f'{x:.1f}' for x in times)}) (target >= 10x)")
            ratios = [r["raw"]["decode_tok_s"] / r["bound_tok_s"] for r in pairs["int4"]]
            shares = ", ".join(f"{100 * x:.0f}" for x in ratios)
            median = statistics.median(ratios)
            read = ", ".join(f"{r['read_gb_s']:.0f}" for r in pairs["int4"])
            checks.append(f"int4 / bandwidth bound, each run against the bandwidth read just before it: "
                          f"median {100 * median:.0f} % ({shares} %; {read} GB/s) (target >= 60 %)")
        if "fp32" in raw:
            smaller = 100 * (1 - i4["weight_bytes"] / raw["fp32"]["weight_bytes"])
            checks.append(f"int4 size vs fp32: {smaller:.0f} % smaller (target >= 75 %)")
    install = result["agent_install"]
    checks.append(f"agent install (`pip install .` in a fresh venv: onnxruntime-genai "
                  f"{install['genai']}, onnxruntime {install['onnxruntime']}): {install['size_mb']} MB "
                  f"(target <= 300 MB); it serves the int4 variant: "
                  f"{'yes' if install['serves_variant'] else 'NO'}")
    checks.append(f"agent idle RSS, no model loaded, that install: {install['idle_rss_mb']} MB "
                  "(target <= 100 MB)")
    lines += ["", f"Memory read bandwidth: {result['read_gb_s']:.1f} GB/s at the start (best of 3), "
              f"{result['cores']} cores reading at once; each raw-loop row's bound is the bandwidth read "
              "just before its run divided by the weight bytes. Table rows: the best of the pairs.",
              "", *[f"- {c}" for c in checks]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=128, help="new tokens per prompt")
    parser.add_argument("--prompts", type=int, default=5, help="prompts per runtime (max 8)")
    parser.add_argument("--work", type=Path, default=None, help="keep models here (reused by a rerun)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out")
    parser.add_argument("--pairs", type=int, default=5,
                        help="raw-loop/endpoint runs per precision, alternating, each raw run just "
                             "after a bandwidth reading (this VM's speed drifts within minutes)")
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="slmops-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    paths = build_all(work)
    device = agent_venv(work)
    device_bin = device / "bin"
    prompts = list(PROMPTS[: args.prompts])
    from controller.pipeline.chat import prompt_text
    prompts_file = work / "prompts.json"
    prompts_file.write_text(json.dumps([prompt_text(p) for p in prompts]))

    cores = usable_cores()
    read_gb_s = memory_read_gb_s(cores)
    log(f"memory read bandwidth {read_gb_s:.1f} GB/s ({cores} cores reading)")
    rows: list[dict[str, Any]] = []

    def add(runtime: str, precision: str, figures: dict[str, Any], size: int, weights: int | None,
            gb_s: float = read_gb_s) -> None:
        row = {"runtime": runtime, "precision": precision, "size_mb": size / 2**20, **figures}
        if weights:
            row["weight_bytes"] = weights
            row["bound_tok_s"] = gb_s * 1e9 / weights
        rows.append(row)
        log(f"{runtime} {precision}: {figures}")

    model_bytes = dir_bytes(paths["model"])
    log("PyTorch eager")
    add("PyTorch eager", "fp32", run_child("torch", paths["model"], prompts_file, args.tokens),
        model_bytes, None)
    log("optimum ORTModelForCausalLM")
    add("optimum ORTModelForCausalLM", "fp32",
        run_child("optimum", paths["optimum-fp32"], prompts_file, args.tokens),
        dir_bytes(paths["optimum-fp32"]), None)
    pairs: dict[str, list[dict[str, Any]]] = {}
    for precision in PRECISIONS:
        variant = paths[f"variant-{precision}"]
        runs = pairs[precision] = []
        for i in range(max(1, args.pairs)):
            gb_s = memory_read_gb_s(cores, trials=1)
            log(f"onnxruntime-genai loop {precision} ({i + 1}/{args.pairs}; {gb_s:.1f} GB/s just before)")
            raw = run_child("genai", variant, prompts_file, args.tokens, device_bin / "python")
            log(f"agent endpoint {precision} ({i + 1}/{args.pairs})")
            endpoint = run_endpoint(device_bin, variant, prompts, args.tokens)
            runs.append({"read_gb_s": gb_s, "raw": raw, "endpoint": endpoint,
                         "bound_tok_s": gb_s * 1e9 / weight_bytes(variant),
                         "endpoint_share": endpoint["e2e_tok_s"] / raw["e2e_tok_s"]})
        best = max(runs, key=lambda r: r["raw"]["decode_tok_s"])
        add("onnxruntime-genai loop", precision, best["raw"], dir_bytes(variant), weight_bytes(variant),
            best["read_gb_s"])
        fastest = max((r["endpoint"] for r in runs), key=lambda e: e["e2e_tok_s"])
        add("agent OpenAI endpoint", precision, fastest, dir_bytes(variant), weight_bytes(variant),
            best["read_gb_s"])
    config = json.loads((paths["model"] / "config.json").read_text())
    params = _param_count(config)
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "params": params, "tokens": args.tokens, "prompts": len(prompts), "read_gb_s": read_gb_s,
        "cores": cores, "vocab": config["vocab_size"], "rows": rows, "pairs": pairs,
        "agent_install": agent_install(device, paths["variant-int4"]),
    }
    text = report(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.md").write_text(text)
    (args.out / "serve.json").write_text(json.dumps(result, indent=2))
    print(text)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _param_count(config: dict[str, Any]) -> int:
    h, n, i, v = (config["hidden_size"], config["num_hidden_layers"], config["intermediate_size"],
                  config["vocab_size"])
    kv = h // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    return n * per_layer + 2 * v * h + h


if __name__ == "__main__":
    main()
