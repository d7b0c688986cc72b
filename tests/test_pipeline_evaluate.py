"""Evaluation: metrics on known values, the PyTorch harness on a tiny model trained here to give
one fixed answer, a LoRA adapter on it, and the isolated run that measures peak memory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from controller.pipeline import chat
from controller.pipeline.evaluate import (
    evaluate,
    evaluate_isolated,
    exact_match,
    normalize,
    percentile,
    rouge_l,
    summarize,
)
from controller.pipeline.evaluate.measure import EvaluationError
from controller.pipeline.events import Cancelled, ListEvents
from controller.pipeline.jsonl import write_jsonl
from controller.pipeline.modelkit import ModelError

FIXED_ANSWER = "your order has shipped"


def train_fixed_answer_model(root: Path, answer: str = FIXED_ANSWER, steps: int = 60) -> Path:
    """A tiny Llama (modelkit "tiny", small vocabulary) trained for a few seconds to answer every
    prompt with ``answer`` and then end: a model whose output a test can predict. Shared with
    test_pipeline_teachers."""
    from tinytrain import train_on_answers

    from controller.pipeline.modelkit import build_model, train_tokenizer

    prompts = [f"where is order {n}? I ordered it on day {n % 7}" for n in range(40)]
    train_tokenizer([chat.full_text(p, answer) for p in prompts], root / "tokenizer", vocab_size=300)
    build_model("tiny", root / "tokenizer", root / "untrained")
    return train_on_answers(root / "untrained", root / "model", [(p, answer) for p in prompts],
                            steps=steps, batch=8)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return train_fixed_answer_model(tmp_path_factory.mktemp("fixed"))


def gold_rows() -> list[dict[str, str]]:
    """Intent "shipped" expects the model's answer, intent "refund" something else."""
    rows = [{"id": f"s{n}", "intent": "shipped", "prompt": f"where is order {100 + n}?",
             "answer": FIXED_ANSWER} for n in range(4)]
    rows += [{"id": f"r{n}", "intent": "refund", "prompt": f"refund order {200 + n} please",
              "answer": f"refund for order {200 + n} is on its way"} for n in range(2)]
    return rows


# -- metrics -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("Order 12 shipped.", "order 12   shipped.", True),
    ("  order 12 shipped. ", "Order 12 shipped.", True),
    ("ｏｒｄｅｒ 12", "order 12", True),  # NFKC: full-width letters
    ("3 x $12 = $36.", "3 x $12 = $36", False),  # punctuation counts
    ("$1250", "$12.50", False),
    ("", "", True),
])
def test_exact_match_ignores_case_and_spacing_but_not_punctuation(pred: str, gold: str,
                                                                  expected: bool) -> None:
    assert exact_match(pred, gold) is expected


def test_normalize_casefolds_and_collapses_whitespace() -> None:
    assert normalize("  Hello\tWORLD\n ") == "hello world"


@pytest.mark.parametrize(("pred", "gold", "expected"), [
    ("the cat sat on the mat", "the cat sat on the mat", 1.0),
    ("", "", 1.0),
    ("", "anything", 0.0),
    ("dog", "the cat sat", 0.0),
    # LCS "the cat the mat" = 4 of 6 and of 5: P = 4/6, R = 4/5, F1 = 2PR / (P + R) = 8/11
    ("the cat was on the mat", "the cat the mat here", 8 / 11),
    ("police killed the gunman", "the gunman kill police", 0.5),  # LCS 2 ("the gunman") of 4 and 4
    ("Order 12, shipped!", "order 12 shipped", 1.0),  # tokens are words: punctuation drops out
])
def test_rouge_l_is_the_f1_of_the_longest_common_word_subsequence(pred: str, gold: str,
                                                                  expected: float) -> None:
    assert rouge_l(pred, gold) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "p", "expected"), [
    ([5.0], 50, 5.0),
    ([1.0, 2.0, 3.0, 4.0], 50, 2.5),
    ([1.0, 2.0, 3.0, 4.0], 0, 1.0),
    ([1.0, 2.0, 3.0, 4.0], 100, 4.0),
    ([4.0, 1.0, 3.0, 2.0], 95, 3.85),  # unsorted input; rank 2.85 between 3 and 4
    (list(range(1, 101)), 95, 95.05),
])
def test_percentile_interpolates_linearly_like_numpy(values: list[float], p: float, expected: float) -> None:
    assert percentile(values, p) == pytest.approx(expected)


@pytest.mark.parametrize(("values", "p", "message"), [
    ([], 50, "no values"),
    ([1.0], 101, "p must be in"),
    ([1.0], -1, "p must be in"),
])
def test_percentile_rejects_bad_input(values: list[float], p: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        percentile(values, p)


def test_summarize_counts_exact_match_overall_and_per_intent() -> None:
    rows = [
        {"intent": "refund", "prediction": "refund sent", "answer": "Refund sent"},
        {"intent": "refund", "prediction": "no", "answer": "refund sent"},
        {"intent": "hours", "prediction": "9 to 5", "answer": "9 to 5"},
        {"intent": "hours", "prediction": "9 to 5", "answer": "9 to 5"},
    ]
    summary = summarize(rows)
    assert summary["n"] == 4
    assert summary["exact_match"] == pytest.approx(0.75)
    assert summary["per_intent"]["refund"] == {"n": 2, "exact_match": 0.5, "rouge_l": pytest.approx(0.5)}
    assert summary["per_intent"]["hours"]["exact_match"] == 1.0
    assert summary["rouge_l"] == pytest.approx(0.75)


@pytest.mark.parametrize(("rows", "message"), [
    ([], "empty"),
    ([{"intent": "a", "prediction": "x"}], "row 0: field 'answer'"),
    ([{"intent": 3, "prediction": "x", "answer": "x"}], "row 0: field 'intent'"),
])
def test_summarize_rejects_empty_or_incomplete_rows(rows: list[dict], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(rows)


# -- the harness -------------------------------------------------------------------------------

def test_evaluate_scores_and_times_a_tiny_model(fixed_model: Path) -> None:
    events = ListEvents()
    result = evaluate(fixed_model, gold_rows(), max_new_tokens=12, batch_size=4, latency_samples=3,
                      device="cpu", events=events)

    assert result["n"] == 6
    assert result["per_intent"]["shipped"] == {"n": 4, "exact_match": 1.0, "rouge_l": 1.0}
    assert result["per_intent"]["refund"]["exact_match"] == 0.0
    assert result["exact_match"] == pytest.approx(4 / 6)
    assert 0 < result["rouge_l"] < 1
    assert result["latency_samples"] == 3
    assert 0 < result["latency_ms"]["p50"] <= result["latency_ms"]["p95"]
    assert result["tokens_per_s"] > 0
    weights = (fixed_model / "model.safetensors").stat().st_size
    assert result["size_bytes"] == weights
    assert 10_000 < result["params"] < 300_000
    assert weights >= result["params"] * 4  # float32 weights
    assert result["device"] == "cpu"
    tasks = {e["task"] for e in events.items if e["type"] == "progress"}
    assert {"evaluate/accuracy", "evaluate/latency"} <= tasks


def test_evaluate_with_an_adapter_counts_base_and_adapter(fixed_model: Path, tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(fixed_model)
    lora = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # LoRA's B starts at zero; give the adapter a visible effect
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.fill_(0.05)
    adapter = tmp_path / "adapter"
    lora.save_pretrained(adapter)
    lora_params = sum(p.numel() for n, p in lora.named_parameters() if "lora_" in n)

    plain = evaluate(fixed_model, gold_rows(), max_new_tokens=12, batch_size=4, latency_samples=1,
                     device="cpu")
    adapted = evaluate(fixed_model, gold_rows(), adapter_dir=adapter, max_new_tokens=12, batch_size=4,
                       latency_samples=1, device="cpu")

    assert adapted["params"] == plain["params"] + lora_params
    adapter_bytes = (adapter / "adapter_model.safetensors").stat().st_size
    assert adapted["size_bytes"] == plain["size_bytes"] + adapter_bytes
    assert set(adapted) == set(plain)


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"model_ref": "/nonexistent/model"}, ModelError, "does not exist"),
    ({"adapter_dir": "NOT_AN_ADAPTER"}, ModelError, "no adapter_config.json"),
    ({"rows": [{"intent": "a", "prompt": "p"}]}, ValueError, "row 1: field 'answer'"),
    ({"rows": []}, ValueError, "empty"),
    ({"latency_samples": 0}, ValueError, "latency_samples"),
])
def test_evaluate_rejects_bad_input_with_a_clear_error(fixed_model: Path, tmp_path: Path, kwargs: dict,
                                                       error: type[Exception], message: str) -> None:
    args = {"model_ref": fixed_model, "rows": gold_rows(), "device": "cpu", **kwargs}
    if args.get("adapter_dir") == "NOT_AN_ADAPTER":
        args["adapter_dir"] = tmp_path  # a directory, but no adapter in it
    with pytest.raises(error, match=message):
        evaluate(args.pop("model_ref"), args.pop("rows"), **args)


# -- in a process of its own -------------------------------------------------------------------

def test_evaluate_isolated_reports_the_child_processes_peak_memory(fixed_model: Path, tmp_path: Path) -> None:
    rows_path = tmp_path / "test.jsonl"
    write_jsonl(rows_path, gold_rows())
    events = ListEvents()

    result = evaluate_isolated(fixed_model, rows_path, max_new_tokens=12, batch_size=4, latency_samples=2,
                               device="cpu", threads=1, events=events)

    assert result["exact_match"] == pytest.approx(4 / 6)
    assert result["peak_memory_bytes"] > 0
    assert result["peak_memory_bytes"] >= result["baseline_memory_bytes"] > 0
    assert result["threads"] == 1
    assert any(e["type"] == "progress" and e["task"] == "evaluate/latency" for e in events.items)
    json.dumps(result)  # what a user reads is plain JSON


def test_cancelling_an_isolated_evaluation_stops_the_child(fixed_model: Path, tmp_path: Path) -> None:
    rows_path = tmp_path / "test.jsonl"
    write_jsonl(rows_path, gold_rows())

    class CancelOnFirstProgress(ListEvents):
        def progress(self, task: str, done: float, total: float, **fields: object) -> None:
            self.request_cancel()

    with pytest.raises(Cancelled):
        evaluate_isolated(fixed_model, rows_path, batch_size=1, device="cpu", threads=1,
                          events=CancelOnFirstProgress())


@pytest.mark.parametrize(("model", "rows_text", "message"), [
    ("/nonexistent/model", '{"intent": "a", "prompt": "p", "answer": "x"}\n', "does not exist"),
    (None, '{"intent": "a", "prompt": "p"\n', r"test\.jsonl:1: malformed JSON"),
])
def test_evaluate_isolated_raises_with_the_childs_error(fixed_model: Path, tmp_path: Path, model: str | None,
                                                       rows_text: str, message: str) -> None:
    rows_path = tmp_path / "test.jsonl"
    rows_path.write_text(rows_text, encoding="utf-8")
    with pytest.raises(EvaluationError, match=message):
        evaluate_isolated(model or fixed_model, rows_path, device="cpu", threads=1)


def test_evaluate_scores_chat_and_text_rows_with_the_chosen_metrics(fixed_model: Path) -> None:
    rows = [{"messages": [{"role": "user", "content": "where is order 107?"},
                          {"role": "assistant", "content": FIXED_ANSWER}]},
            {"prompt": "refund order 8 please", "answer": "refund on its way"},
            {"text": "your order has shipped and is on its way"}]
    result = evaluate(fixed_model, rows, metrics=["exact_match", "chrf", "perplexity"], max_new_tokens=12,
                      batch_size=2, latency_samples=1, device="cpu")
    assert result["metrics"] == ["exact_match", "chrf", "perplexity"]
    assert result["exact_match"] == pytest.approx(0.5) and 0 < result["chrf"] <= 100
    assert result["perplexity"] > 1 and result["perplexity_tokens"] > 0
    assert "rouge_l" not in result and "per_intent" not in result
