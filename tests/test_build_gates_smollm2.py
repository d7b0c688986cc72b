"""A real pretrained model (SmolLM2-135M-Instruct) built for the fp32 and the AVX-512 int4
profiles and judged by the gates that hold for any model: greedy agreement with the fp32
PyTorch model, ROUGE-L against its answers, the task metric's drop on the references and the
perplexity ratio. The AVX-512 profile's int4 block (128) does not divide SmolLM2's width (576):
padded, its answers drifted from the fp32 model's after a few tokens, so the build fits the block
to the model (64) and says so in the variant's record. About 80 s here."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.build.profiles import builtin_profiles
from controller.build.variants import build_and_check
from controller.pipeline.evaluate.rows import parse_rows

QUESTIONS = [
    ("What is the capital of France? Answer in one word.", "Paris"),
    ("Name three primary colors.", "Red, blue and yellow."),
    ("What is 2 + 2?", "4"),
    ("What is the largest planet in the solar system?", "Jupiter"),
    ("Who wrote Romeo and Juliet?", "William Shakespeare"),
    ("What is the boiling point of water in Celsius?", "100 degrees Celsius"),
    ("Translate 'good morning' into Spanish.", "Buenos días"),
    ("Give one synonym for happy.", "Joyful"),
    ("What color is the sky on a clear day?", "Blue"),
    ("How many days are in a week?", "Seven"),
]


def held_out() -> list[dict]:
    """20 rows: 10 prompt/answer rows and the same 10 as chat rows with a system turn."""
    rows: list[dict] = [{"prompt": q, "answer": a} for q, a in QUESTIONS]
    rows += [{"messages": [{"role": "system", "content": "You answer briefly."},
                           {"role": "user", "content": q}, {"role": "assistant", "content": a}]}
             for q, a in QUESTIONS]
    return rows


def test_smollm2_fp32_passes_and_int4_is_judged_by_the_generic_measures(smollm2_dir: Path,
                                                                      tmp_path: Path) -> None:
    profiles = builtin_profiles()
    fp32, int4 = profiles.get("cpu-fp32"), profiles.get("cpu-x86-avx512-int4")
    outcomes = build_and_check(smollm2_dir, [fp32, int4], parse_rows(held_out()), tmp_path,
                               max_new_tokens=24, threads=1, perplexity=True)
    by = {o.profile: o for o in outcomes}

    for outcome in outcomes:
        m = outcome.metrics
        for key in ("greedy_agreement", "rouge_l_vs_fp32", "task_metric_value", "reference_task_metric",
                    "metric_drop", "perplexity", "reference_perplexity", "perplexity_ratio"):
            assert isinstance(m[key], float), (outcome.profile, key)
        assert m["task_metric"] == "rouge_l" and m["references"] == 20 and m["intents"] is False
        gates = outcome.gate.gates
        for name in ("min_greedy_agreement", "min_rouge_l_vs_fp32", "max_metric_drop",
                     "max_perplexity_ratio"):
            assert name in gates
        # the verdict follows the thresholds
        expected = (m["greedy_agreement"] >= gates["min_greedy_agreement"]
                    and m["rouge_l_vs_fp32"] >= gates["min_rouge_l_vs_fp32"]
                    and m["metric_drop"] <= gates["max_metric_drop"]
                    and m["perplexity_ratio"] <= gates["max_perplexity_ratio"])
        quality_reasons = [r for r in outcome.gate.reason.split("; ")
                           if "agreement" in r or "ROUGE-L" in r or "dropped" in r or "perplexity" in r]
        assert expected == (not quality_reasons), (outcome.profile, m, outcome.gate.reason)

    f = by["cpu-fp32"].metrics
    assert by["cpu-fp32"].status == "passed", by["cpu-fp32"].gate.reason
    assert f["greedy_agreement"] == 1.0 and f["perplexity_ratio"] == pytest.approx(1.0, abs=0.01)

    q = by["cpu-x86-avx512-int4"]
    assert q.build["options"]["int4_block_size"] == "64", q.build
    assert q.build["block_size_fitted"].startswith("64 (the profile asks 128"), q.build
    assert q.metrics["perplexity_ratio"] > 1.0  # int4 is not free; the gates weigh how much
