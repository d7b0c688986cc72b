"""The PyTorch harness: batched generation in the chat format (shared by the local teacher and
evaluation) and ``evaluate``, which scores a model on a test set and times it.

Accuracy comes from batched greedy generation over every row. Latency is the wall time of one
answer generated alone (batch 1) on the first ``latency_samples`` rows, after one untimed
warm-up answer; tokens/s is the tokens those answers generated over the seconds they took. Peak
memory needs a process of its own: see :mod:`controller.pipeline.evaluate.measure`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline import chat
from controller.pipeline.evaluate.judge import JudgeConfig, judge_answers
from controller.pipeline.evaluate.metrics import (
    ANSWERS,
    DEFAULT_METRICS,
    JUDGE,
    METRICS,
    check_metrics,
    percentile,
    perplexity_of,
    score_answers,
)
from controller.pipeline.evaluate.rows import EvalRow, has_intents, parse_row
from controller.pipeline.events import Events
from controller.pipeline.modelkit import ModelError, count_params, load_model
from controller.pipeline.modelkit.loading import is_adapter_dir, looks_like_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


@dataclass(frozen=True)
class Generation:
    text: str  # the answer, cleaned (chat.clean_answer)
    finish_reason: str  # "stop": ended with an end token; "length": hit max_new_tokens
    new_tokens: int  # tokens generated, the end token included


Prompt = str | Sequence[Mapping[str, str]]  # a user message, or the chat turns before the answer


def format_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The tokenizer's chat template when it has one (ours yields chat.prompt_text exactly),
    with the generation prompt; else chat.prompt_text of the last user turn."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if getattr(tokenizer, "chat_template", None):
        return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    users = [m["content"] for m in messages if m.get("role") == "user"]
    return chat.prompt_text(users[-1] if users else "")


def end_token_ids(model: Any, tokenizer: Any) -> list[int]:
    """Every token that ends an answer: the generation config's eos ids and the tokenizer's."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured if isinstance(configured, list) else [configured], [tokenizer.eos_token_id]):
        ids.extend(i for i in value if isinstance(i, int) and i not in ids)
    return ids


def generate_detailed(model: Any, tokenizer: Any, prompts: Sequence[Prompt], *, max_new_tokens: int = 64,
                      batch_size: int = 32, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
                      events: Events | None = None, task: str = "generate") -> list[Generation]:
    """Answer ``prompts`` in batches (left padded, similar lengths together), greedy when
    ``temperature`` is 0 and sampled (seeded) otherwise. Reports progress per batch and checks
    for cancellation between batches. Answers come back in the order of ``prompts``."""
    import torch
    from transformers import GenerationConfig

    events = events or Events()
    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be >= 1, got {max_new_tokens}, {batch_size}")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; batched generation needs one")
    ends = end_token_ids(model, tokenizer)
    if not ends:
        raise ValueError("neither the model's generation config nor the tokenizer names an end "
                         "(eos) token; generation could not stop")
    templated = bool(getattr(tokenizer, "chat_template", None))
    texts = [format_prompt(tokenizer, p) for p in prompts]
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    sampling = temperature > 0
    sampler = {"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {}
    config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=sampling, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=ends, bos_token_id=getattr(model.generation_config, "bos_token_id", None), **sampler)
    device = next(model.parameters()).device
    results: list[Generation | None] = [None] * len(texts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens line up at the right edge of every row
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(order), batch_size):
                events.check_cancelled()
                batch = order[start:start + batch_size]
                encoded = tokenizer([texts[i] for i in batch], return_tensors="pt", padding=True,
                                    add_special_tokens=not templated, return_token_type_ids=False).to(device)
                with torch.inference_mode():
                    output = model.generate(**encoded, generation_config=config)
                new = output[:, encoded["input_ids"].shape[1]:].tolist()
                for i, row in zip(batch, new, strict=True):
                    results[i] = _finish(tokenizer, row, ends)
                events.progress(task, min(start + batch_size, len(order)), len(order), unit="prompt")
    finally:
        tokenizer.padding_side = side
    return [r for r in results if r is not None]


def _finish(tokenizer: Any, row: list[int], ends: list[int]) -> Generation:
    cut = next((k for k, token in enumerate(row) if token in ends), None)
    if cut is None:
        return Generation(chat.clean_answer(tokenizer.decode(row, skip_special_tokens=True)), "length",
                          len(row))
    return Generation(chat.clean_answer(tokenizer.decode(row[:cut], skip_special_tokens=True)), "stop",
                      cut + 1)


def generate_answers(model: Any, tokenizer: Any, prompts: Sequence[Prompt], *, max_new_tokens: int = 64,
                     batch_size: int = 32, events: Events | None = None, task: str = "generate") -> list[str]:
    """Greedy answers to ``prompts`` in the chat format, cleaned."""
    return [g.text for g in generate_detailed(model, tokenizer, prompts, max_new_tokens=max_new_tokens,
                                              batch_size=batch_size, events=events, task=task)]


def evaluate(model_ref: str | Path, rows: Sequence[Mapping[str, Any] | EvalRow], *,
             metrics: Sequence[str] | None = None, judge: JudgeConfig | None = None,
             adapter_dir: Path | None = None, max_new_tokens: int = 64, batch_size: int = 32,
             latency_samples: int = 50, device: str = "auto", events: Events | None = None) -> dict[str, Any]:
    """Score the model at ``model_ref`` (a directory or hub id; with ``adapter_dir``, that LoRA
    adapter on it, unmerged) on ``rows`` (rows.py: prompt/answer, chat or text rows) with the
    named ``metrics`` (metrics.METRICS; default exact_match and rouge_l), and time it.

    Returns {"n", "metrics": the names, each metric's value, "per_intent" (rows with intents),
    "latency_ms": {"p50", "p95"}, "tokens_per_s", "latency_samples", "params", "size_bytes",
    "device"}, plus "perplexity_tokens" and the judge's counts when chosen. ``size_bytes`` is
    the weight files on disk (base + adapter); for a hub id, the weights' bytes in memory."""
    events = events or Events()
    if isinstance(latency_samples, bool) or not isinstance(latency_samples, int) or latency_samples < 1:
        raise ValueError(f"latency_samples must be an integer >= 1, got {latency_samples!r}")
    parsed = [r if isinstance(r, EvalRow) else parse_row(r, f"row {i}") for i, r in enumerate(rows, start=1)]
    if not parsed:
        raise ValueError("the evaluation set is empty")
    names = check_metrics(list(metrics) if metrics else list(DEFAULT_METRICS))
    asking = [r for r in parsed if r.asks]
    answer_metrics = [n for n in names if METRICS[n].needs in (ANSWERS, JUDGE)]
    if answer_metrics and not asking:
        raise ValueError(f"metrics {', '.join(answer_metrics)} compare answers with references, and these "
                         "rows are text rows (nothing to answer); choose perplexity, or give prompt/answer "
                         "or chat rows")
    if "judge" in names and judge is None:
        raise ValueError("metrics: judge needs a judge endpoint "
                         "(judge: {base_url, model, api_key_env, rubric})")

    model, tokenizer = load_model(model_ref, device=device, events=events)
    if adapter_dir is not None:
        adapter_dir = Path(adapter_dir)
        if not is_adapter_dir(adapter_dir):
            raise ModelError(f"adapter_dir {adapter_dir} has no adapter_config.json; expected a peft "
                             "LoRA adapter directory")
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter_dir)
        except (OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"could not apply adapter {adapter_dir} to {model_ref}: {e}") from e
        model.eval()
    resolved = str(next(model.parameters()).device)

    result: dict[str, Any] = {"n": len(parsed), "metrics": names}
    if asking:
        predictions = generate_answers(model, tokenizer, [list(r.messages) for r in asking],
                                       max_new_tokens=max_new_tokens, batch_size=batch_size, events=events,
                                       task="evaluate/accuracy")
        references = [r.reference or "" for r in asking]
        intents = [r.intent or "" for r in asking] if has_intents(asking) else None
        result.update(score_answers(predictions, references, names, intents))
        result["n"] = len(parsed)
        if "judge" in names and judge is not None:
            result.update(judge_answers(judge, [r.prompt for r in asking], references, predictions, events))
        result["examples"] = [{"prompt": r.prompt, "reference": r.reference, "answer": p}
                              for r, p in zip(asking[:3], predictions, strict=False)]
    if "perplexity" in names:
        scored = perplexity(model, tokenizer, parsed, events=events)
        result["perplexity"], result["perplexity_tokens"] = scored["perplexity"], scored["tokens"]

    if asking:
        result.update(_timing(model, tokenizer, [list(r.messages) for r in asking[:latency_samples]],
                              max_new_tokens, events))
    result.update({
        "params": count_params(model),
        "size_bytes": weights_bytes(model_ref, getattr(model, "get_base_model", lambda: model)())
        + (weights_bytes(adapter_dir, None, with_base=False) if adapter_dir else 0),
        "device": resolved,
    })
    return result


def _timing(model: Any, tokenizer: Any, timed: Sequence[Prompt], max_new_tokens: int,
            events: Events) -> dict[str, Any]:
    """Latency p50/p95 of answers generated one at a time (after one untimed warm-up answer)
    and tokens/s over them."""
    generate_detailed(model, tokenizer, timed[:1], max_new_tokens=max_new_tokens, batch_size=1)  # warm-up
    seconds: list[float] = []
    tokens = 0
    for number, prompt in enumerate(timed, start=1):
        events.check_cancelled()
        start = time.perf_counter()
        (one,) = generate_detailed(model, tokenizer, [prompt], max_new_tokens=max_new_tokens, batch_size=1)
        seconds.append(time.perf_counter() - start)
        tokens += one.new_tokens
        events.progress("evaluate/latency", number, len(timed), unit="prompt")
    return {"latency_ms": {"p50": percentile(seconds, 50) * 1000, "p95": percentile(seconds, 95) * 1000},
            "tokens_per_s": tokens / sum(seconds), "latency_samples": len(seconds)}


def perplexity(model: Any, tokenizer: Any, rows: Sequence[EvalRow], *,
               events: Events | None = None) -> dict[str, Any]:
    """Token-level perplexity: exp of the mean negative log-likelihood per scored token, over
    every row. A prompt/answer or chat row scores the reference's tokens given the prompt (the
    chat template with its generation prompt; the end token is not scored); a text row scores
    every token after its first. Rows one at a time (no padding to mask)."""
    import torch

    events = events or Events()
    device = next(model.parameters()).device
    templated = bool(getattr(tokenizer, "chat_template", None))
    nll, count = 0.0, 0
    for number, row in enumerate(rows, start=1):
        events.check_cancelled()
        if row.text is not None:
            ids = tokenizer(row.text, add_special_tokens=True)["input_ids"]
            context = 1
        else:
            prompt_ids = tokenizer(format_prompt(tokenizer, list(row.messages)),
                                   add_special_tokens=not templated)["input_ids"]
            ids = prompt_ids + tokenizer(row.reference or "", add_special_tokens=False)["input_ids"]
            context = len(prompt_ids)
        if len(ids) <= context:
            continue
        tensor = torch.tensor([ids], device=device)
        with torch.inference_mode():
            logits = model(input_ids=tensor).logits[0, :-1].float()
        logprobs = torch.log_softmax(logits, dim=-1)
        targets = tensor[0, 1:]
        picked = logprobs.gather(1, targets.unsqueeze(1)).squeeze(1)[context - 1:]
        nll -= float(picked.sum())
        count += int(picked.numel())
        events.progress("evaluate/perplexity", number, len(rows), unit="row")
    return {"perplexity": perplexity_of(nll, count), "tokens": count, "nll": nll}


def weights_bytes(ref: str | Path, model: Any, *, with_base: bool = True) -> int:
    """Bytes of the weight files of a model or adapter directory (an adapter directory counts its
    base too, unless ``with_base`` is False). For a hub id (``model`` given), the bytes of the
    loaded weights instead."""
    import json

    if not looks_like_path(ref):
        return sum(p.numel() * p.element_size() for p in model.parameters()) if model is not None else 0
    path = Path(ref).expanduser()
    total = sum(f.stat().st_size for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    if with_base and is_adapter_dir(path):
        config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
        base = config.get("base_model_name_or_path")
        if base and (model is not None or looks_like_path(base)):
            total += weights_bytes(base, model)
    return total
