"""The bundled customer-support task: seeded, disjoint splits and a format validator."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from controller.pipeline.jsonl import read_jsonl
from controller.pipeline.task import (
    ALL_INTENTS,
    BASE_INTENTS,
    NEW_INTENTS,
    generate,
    split_of,
    validate_answer,
    write_splits,
)


def test_splits_never_share_a_prompt_whatever_the_seed() -> None:
    prompts = {split: {r["prompt"] for seed in (0, 1) for r in generate(split, 600, seed=seed,
                                                                            intents=ALL_INTENTS)}
               for split in ("train", "val", "test")}
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    assert all(split_of(p) == split for split, ps in prompts.items() for p in ps)


def test_generation_is_deterministic_for_a_seed_and_differs_across_seeds() -> None:
    assert generate("train", 200, seed=7) == generate("train", 200, seed=7)
    assert generate("train", 200, seed=7) != generate("train", 200, seed=8)


def test_a_split_has_distinct_prompts_and_balanced_intents() -> None:
    rows = generate("val", 503, seed=3)
    assert len({r["prompt"] for r in rows}) == len(rows) == 503
    assert len({r["id"] for r in rows}) == 503
    counts = Counter(r["intent"] for r in rows)
    assert set(counts) == set(BASE_INTENTS)
    assert max(counts.values()) - min(counts.values()) <= 1


def test_the_new_intent_is_kept_apart_from_the_base_intents() -> None:
    assert not set(NEW_INTENTS) & set(BASE_INTENTS)
    assert {r["intent"] for r in generate("train", 50, intents=NEW_INTENTS)} == set(NEW_INTENTS)


def test_answers_are_an_exact_function_of_the_prompt() -> None:
    rows = generate("train", 1200, seed=5, intents=ALL_INTENTS)
    for row in rows:
        prompt, answer = row["prompt"], row["answer"]
        if row["intent"] == "order_total":
            qty, price = map(int, re.search(r"(\d+) \w+\D+\$(\d+) each", prompt).groups())
            assert answer == f"{qty} x ${price} = ${qty * price}. Your total is ${qty * price}."
        elif row["intent"] in ("order_status", "refund"):
            order = re.search(r"#(\d{5})", prompt).group(1)
            assert f"#{order} " in answer
        elif row["intent"] == "password_reset":
            assert re.search(r"\S+@\S+\.[a-z]+", prompt).group(0).rstrip(".,") in answer
        elif row["intent"] == "cancel_subscription":
            assert re.search(r"AC-\d{6}", prompt).group(0) in answer
        elif row["intent"] == "opening_hours":
            day = re.search(r"(Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day", prompt).group(0)
            assert answer.startswith(f"On {day} we are ")
    by_reason = {r["answer"].split(" ", 3)[3] for r in rows if r["intent"] == "refund"}
    assert len(by_reason) == 3  # damaged, late, wrong: one reply per reason category


def test_the_validator_accepts_every_gold_answer() -> None:
    for row in generate("test", 600, seed=2, intents=ALL_INTENTS):
        assert validate_answer(row["prompt"], row["answer"]) is None, row


@pytest.mark.parametrize("answer, reason", [
    ("", "empty answer"),
    ("   ", "empty answer"),
    ("I don't know.", "not a known reply form"),
    ("Order #123 has shipped and will arrive in 2 days.", "not a known reply form"),  # 3 digits
    ("On Funday we are closed.", "not a known reply form"),
    ("3 x $4 = $12.", "not a known reply form"),  # truncated
    ("Order #12345 has shipped and will arrive in 2 days. Order #12345", "not a known reply form"),
    ("A reset link was sent to nobody. It expires in 1 hour.", "not a known reply form"),
])
def test_the_validator_rejects_answers_of_no_known_form(answer: str, reason: str) -> None:
    assert validate_answer("Where is my order #12345?", answer) == reason


def test_the_validator_checks_form_not_correctness() -> None:
    assert validate_answer("How much for 3 mugs at $4 each?", "3 x $4 = $13. Your total is $13.") is None


def test_write_splits_writes_readable_jsonl(tmp_path: Path) -> None:
    paths = write_splits(tmp_path / "data", {"train": 30, "test": 10}, seed=4)
    assert set(paths) == {"train", "test"}
    rows = read_jsonl(paths["train"], required=("id", "intent", "prompt", "answer"))
    assert rows == generate("train", 30, seed=4)
    assert not list((tmp_path / "data").glob(".*"))  # no temporary files left


@pytest.mark.parametrize("kwargs, message", [
    ({"split": "dev", "n": 3}, "split must be one of train, val, test, got 'dev'"),
    ({"split": "train", "n": -1}, "n must be a non-negative integer, got -1"),
    ({"split": "train", "n": 3, "intents": ("weather",)}, "unknown intent(s) ['weather']"),
])
def test_generate_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError) as e:
        generate(**kwargs)
    assert message in str(e.value)
