"""The evaluation metrics registry, the LLM judge (against the FAKE OpenAI server: no real
judge can run here) and the comparison table."""

from __future__ import annotations

import pytest
from fake_openai import FakeOpenAIServer

from controller.pipeline.evaluate.compare import compare_rows
from controller.pipeline.evaluate.judge import JudgeConfig, judge_answers, parse_score
from controller.pipeline.evaluate.metrics import check_metrics, exact_match_relaxed, score_answers
from controller.pipeline.evaluate.rows import parse_rows
from controller.pipeline.jsonl import DataError


def test_every_named_metric_scores_answers_against_references() -> None:
    preds = ["Paris.", "the cat sat on the mat", "blue"]
    golds = ["paris", "the cat sat on the mat", "red"]
    out = score_answers(preds, golds, ["exact_match", "exact_match_relaxed", "rouge_l", "bleu", "chrf"])
    assert out["exact_match"] == pytest.approx(1 / 3)  # "Paris." != "paris": punctuation counts
    assert out["exact_match_relaxed"] == pytest.approx(2 / 3)
    assert out["rouge_l"] == pytest.approx(2 / 3)
    assert 0 < out["bleu"] < 100 and 0 < out["chrf"] < 100


def test_relaxed_exact_match_ignores_case_whitespace_and_punctuation_only() -> None:
    assert exact_match_relaxed("  The answer: Paris! ", "the answer paris")
    assert not exact_match_relaxed("$1250", "$12.50 more")


def test_an_unknown_metric_is_refused_with_a_suggestion() -> None:
    with pytest.raises(ValueError, match=r"metrics\[1\]: unknown metric 'rouge'; did you mean rouge_l"):
        check_metrics(["bleu", "rouge"])
    assert check_metrics("rouge_l,bleu") == ["rouge_l", "bleu"]


def test_chat_rows_take_the_last_assistant_turn_as_the_reference() -> None:
    (row,) = parse_rows([{"messages": [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Capital of France?"},
                                       {"role": "assistant", "content": "Paris"}]}])
    assert row.reference == "Paris" and [m["role"] for m in row.messages] == ["system", "user"]
    with pytest.raises(DataError, match="rows: row 1: messages: the last turn is the reference"):
        parse_rows([{"messages": [{"role": "user", "content": "hi"}]}])


@pytest.mark.parametrize(("reply", "score"), [
    ("SCORE: 4 - right, misses a detail", 4), ("score=5", 5), ("**Score:** 2 — mostly wrong", 2),
    ("SCORE: 7 - off the scale", None), ("I think it is fine", None), ("", None)])
def test_a_judge_reply_s_score_is_parsed_or_counted_as_unparsed(reply: str, score: int | None) -> None:
    assert parse_score(reply) == score


def test_the_judge_asks_an_openai_endpoint_with_the_rubric_and_averages_its_scores() -> None:
    def answer(prompt: str) -> str:
        return "no idea" if "Assistant's answer:\nwrong" in prompt else "SCORE: 5 - says Paris"

    with FakeOpenAIServer(answer) as server:
        config = JudgeConfig(server.url, server.model, rubric="5 if it names Paris, 1 otherwise")
        out = judge_answers(config, ["Capital?", "Capital?", "Capital?"], ["Paris"] * 3,
                            ["Paris", "It is Paris", "wrong"])
        asked = server.prompts_asked()
    assert out["judge"] == 1.0 and out["judge_mean_score"] == 5.0
    assert (out["judge_scored"], out["judge_unparsed"]) == (2, 1)
    assert len(asked) == 3 and all("5 if it names Paris, 1 otherwise" in p for p in asked)


def test_judge_settings_are_checked_by_field() -> None:
    from controller.pipeline.evaluate.judge import JudgeError

    with pytest.raises(JudgeError, match=r"judge\.model: required"):
        JudgeConfig.from_dict({"base_url": "http://127.0.0.1:1/v1"})


def test_the_comparison_table_has_retention_against_the_teacher() -> None:
    teacher = {"model": "teacher", "params": 1e9, "metrics": {
        "metrics": ["rouge_l"], "rouge_l": 0.8, "latency_ms": {"p50": 100.0, "p95": 150.0},
        "tokens_per_s": 20.0, "peak_memory_bytes": 4e9}}
    student = {"model": "student", "params": 1e8, "metrics": {
        "metrics": ["rouge_l"], "rouge_l": 0.6, "latency_ms": {"p50": 25.0, "p95": 40.0},
        "tokens_per_s": 90.0, "peak_memory_bytes": 5e8}}
    rows = compare_rows([teacher, student])
    assert [r["metric"] for r in rows] == ["rouge_l", "rouge_l"]
    assert rows[1]["retention"] == pytest.approx(0.75) and rows[1]["speedup"] == pytest.approx(4.0)
    assert rows[1]["params_ratio"] == pytest.approx(0.1) and rows[0]["retention"] == 1.0
    ppl = compare_rows([teacher, student], metric="perplexity")
    assert ppl[1]["accuracy"] is None and ppl[1]["retention"] is None
