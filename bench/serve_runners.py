"""One runtime, one model, measured in a process of its own (so its peak memory is its own).

    python -m bench.serve_runners KIND PATH --prompts-file F --tokens N

KIND is one of:
- ``torch``: PyTorch fp32 eager ``generate`` on a Hugging Face model directory;
- ``optimum``: optimum's ``ORTModelForCausalLM.generate`` on an exported ONNX directory;
- ``genai``: the raw onnxruntime-genai decode loop on a variant directory.

Every runner decodes greedily exactly ``--tokens`` new tokens per prompt (end-of-sequence is
suppressed), so the runtimes do the same work. It prints one JSON line: load seconds, time to
first token (p50 over the prompts), decode tokens/s (tokens after the first over the time
after the first; a first, uncounted run warms up), and peak RSS (``VmHWM`` of this process).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from bench.controller_proc import vm_hwm_bytes


def summary(load_s: float, runs: list[tuple[float, float, int]], peak_rss_bytes: int) -> dict[str, Any]:
    """runs: (seconds to the first token, seconds for the rest, tokens after the first).
    decode_tok_s counts the tokens after the first over the time after the first; e2e_tok_s
    counts every token over each request's whole time (what a caller gets, first token included)."""
    ttft = [r[0] for r in runs]
    decode_tokens = sum(r[2] for r in runs)
    decode_s = sum(r[1] for r in runs)
    total_s = sum(r[0] + r[1] for r in runs)
    return {"load_s": round(load_s, 3), "ttft_ms": round(statistics.median(ttft) * 1000, 2),
            "decode_tok_s": round(decode_tokens / decode_s, 2) if decode_s else 0.0,
            "e2e_tok_s": round((decode_tokens + len(runs)) / total_s, 2) if total_s else 0.0,
            "tokens": decode_tokens + len(runs), "peak_rss_mb": round(peak_rss_bytes / 2**20, 1)}


def _summary(load_s: float, runs: list[tuple[float, float, int]]) -> dict[str, Any]:
    return summary(load_s, runs, vm_hwm_bytes())


def run_genai(path: Path, prompts: list[str], tokens: int) -> dict[str, Any]:
    import onnxruntime_genai as og

    from agent.engine.engine import usable_cores

    start = time.perf_counter()
    config = og.Config(str(path))  # the thread count the agent uses: one per core
    threads = usable_cores()
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {
        "intra_op_num_threads": threads, "inter_op_num_threads": 1}}}}))
    model = og.Model(config)
    tokenizer = og.Tokenizer(model)
    load_s = time.perf_counter() - start
    runs = []
    for prompt in [prompts[0], *prompts]:  # the first run warms up and is not counted
        ids = tokenizer.encode(prompt)
        params = og.GeneratorParams(model)
        total = len(ids) + tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        t0 = time.perf_counter()
        generator = og.Generator(model, params)
        generator.append_tokens(ids)
        generator.generate_next_token()
        t1 = time.perf_counter()
        produced = 1
        while not generator.is_done():
            generator.generate_next_token()
            produced += 1
        runs.append((t1 - t0, time.perf_counter() - t1, produced - 1))
        del generator
    return _summary(load_s, runs[1:])


def _hf_generate(model: Any, tokenizer: Any, prompts: list[str],
                 tokens: int) -> list[tuple[float, float, int]]:
    import torch

    runs = []
    for prompt in [prompts[0], *prompts]:  # the first run warms up and is not counted
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            t0 = time.perf_counter()
            model.generate(**inputs, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            t1 = time.perf_counter()
            out = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
            t2 = time.perf_counter()
        produced = out.shape[1] - inputs["input_ids"].shape[1]
        # The first token is timed alone; the rest is the full run less one first-token time.
        runs.append((t1 - t0, max(t2 - t1 - (t1 - t0), 1e-9), produced - 1))
    return runs[1:]


def run_torch(path: Path, prompts: list[str], tokens: int) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    load_s = time.perf_counter() - start
    return _summary(load_s, _hf_generate(model, tokenizer, prompts, tokens))


def run_optimum(path: Path, prompts: list[str], tokens: int) -> dict[str, Any]:
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = ORTModelForCausalLM.from_pretrained(path, use_cache=True)
    load_s = time.perf_counter() - start
    return _summary(load_s, _hf_generate(model, tokenizer, prompts, tokens))


RUNNERS = {"torch": run_torch, "optimum": run_optimum, "genai": run_genai}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=sorted(RUNNERS))
    parser.add_argument("path", type=Path)
    parser.add_argument("--prompts-file", type=Path, required=True, help="a JSON list of prompt texts")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    prompts = json.loads(args.prompts_file.read_text())
    print(json.dumps(RUNNERS[args.kind](args.path, prompts, args.tokens)), flush=True)


if __name__ == "__main__":
    main()
