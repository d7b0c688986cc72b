"""Synthetic data: a teacher behind a fake OpenAI-compatible server (real HTTP on loopback)
labels prompts; unusable answers are dropped and counted; a rerun resumes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fake_openai import FakeOpenAIServer

from controller.pipeline.events import Cancelled, ListEvents
from controller.pipeline.jsonl import DataError, read_jsonl
from controller.pipeline.synth import label_prompts, meta_path, partial_path
from controller.pipeline.teachers import GenerationSettings, TeacherError
from controller.pipeline.teachers.openai_compat import OpenAITeacher

SETTINGS = GenerationSettings(max_new_tokens=32, seed=5)


def teacher(server: FakeOpenAIServer, model: str = "fake-teacher") -> OpenAITeacher:
    return OpenAITeacher(server.url, model, concurrency=4, timeout_s=1.0, retries=1, backoff_s=0.01)


def prompt_rows(n: int) -> list[dict[str, str]]:
    return [{"id": f"p{i}", "intent": "refund" if i % 2 else "order_status", "prompt": f"question {i}"}
            for i in range(n)]


class CancelAfter(ListEvents):
    """Asks for a cancel once ``labelled`` prompts are done: a job stopped mid-way."""

    def __init__(self, labelled: int) -> None:
        super().__init__()
        self.labelled = labelled

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        super().progress(task, done, total, **fields)
        if task == "synth/label" and done >= self.labelled:
            self.request_cancel()


def test_labelled_file_holds_the_teachers_answers_and_meta(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    rows = prompt_rows(10) + [{"id": "x", "prompt": "no intent given"}]
    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), rows, out, SETTINGS, ListEvents(), chunk=4)

    assert (report.asked, report.reused, report.kept, report.dropped) == (11, 0, 11, {})
    labelled = read_jsonl(out, required=("id", "intent", "prompt", "answer", "teacher_finish"))
    assert labelled[0] == {"id": "p0", "intent": "order_status", "prompt": "question 0",
                           "answer": "answer to: question 0", "teacher_finish": "stop"}
    assert [r["id"] for r in labelled] == [r["id"] for r in rows]  # the prompts' order
    assert labelled[-1]["intent"] == "unknown"
    meta = json.loads(meta_path(out).read_text())
    assert meta["teacher"] == {"kind": "openai", "base_url": server.url, "model": "fake-teacher"}
    assert meta["settings"] == {"max_new_tokens": 32, "temperature": 0.0, "top_p": 1.0, "batch_size": 32,
                                "seed": 5}
    assert meta["counts"] == {"prompts": 11, "asked": 11, "reused": 0, "kept": 11, "dropped": {}}
    assert meta["created"]


def long_answer(prompt: str) -> str:
    return "x" * 50 if prompt == "question 3" else f"answer to: {prompt}"


def only(mode: str) -> Callable[[str, int], str | None]:
    return lambda prompt, attempt: mode if prompt == "question 3" else None


@pytest.mark.parametrize(("server_args", "reason"), [
    ({"fault": only("empty")}, "empty"),
    ({"fault": only("length")}, "truncated"),
    ({"answer": long_answer}, "too_long"),
    ({"fault": only("garbage")}, "error"),
    ({"fault": only("400")}, "error"),
    ({"answer": lambda p: "WRONG" if p == "question 3" else f"answer to: {p}"}, "invalid"),
])
def test_unusable_answer_is_dropped_and_counted(tmp_path: Path, server_args: dict, reason: str) -> None:
    out = tmp_path / "train.jsonl"

    def validator(prompt: str, answer: str) -> str | None:
        return None if answer.startswith("answer to:") or answer.startswith("x") else "not a reply form"

    with FakeOpenAIServer(**server_args) as server:
        report = label_prompts(teacher(server), prompt_rows(10), out, SETTINGS, ListEvents(),
                               max_answer_chars=40, validator=validator, min_success_ratio=0.8)

    assert report.dropped == {reason: 1}
    assert report.kept == 9
    assert "p3" not in {r["id"] for r in read_jsonl(out)}
    verdicts = {r["id"]: r["verdict"] for r in read_jsonl(partial_path(out))}
    assert verdicts["p3"] == reason
    assert json.loads(meta_path(out).read_text())["counts"]["dropped"] == {reason: 1}


def test_too_few_usable_answers_stops_with_the_counts(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"

    def fault(prompt: str, attempt: int) -> str | None:
        number = int(prompt.split()[1])
        return "garbage" if number < 85 else "empty" if number < 88 else None

    with FakeOpenAIServer(fault=fault) as server:
        with pytest.raises(TeacherError) as raised:
            label_prompts(teacher(server), prompt_rows(100), out, SETTINGS, ListEvents(), chunk=100)

    assert str(raised.value) == ("teacher gave usable answers to 12 of 100 prompts (min_success_ratio 0.9): "
                                 "dropped empty=3 error=85")
    assert not out.exists() and not meta_path(out).exists()
    assert len(read_jsonl(partial_path(out))) == 100  # kept for a rerun


def test_labelling_stops_as_soon_as_the_ratio_cannot_be_met(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer(fault=lambda prompt, attempt: "garbage") as server:
        with pytest.raises(TeacherError, match=r"only 0 of the first 20 prompts; with 100 in all, "
                           r"min_success_ratio 0.9 can no longer be met: dropped error=20"):
            label_prompts(teacher(server), prompt_rows(100), out, SETTINGS, ListEvents(), chunk=10)
    assert len(server.requests) == 20  # 10 drops were still allowed after the first chunk


def test_endpoint_down_fails_fast_and_writes_nothing(tmp_path: Path) -> None:
    server = FakeOpenAIServer()
    server.stop()
    out = tmp_path / "train.jsonl"
    with pytest.raises(TeacherError, match="is unreachable"):
        label_prompts(teacher(server), prompt_rows(50), out, SETTINGS, ListEvents())
    assert not out.exists() and not partial_path(out).exists()


def test_rerun_after_a_stopped_run_asks_the_teacher_only_for_missing_prompts(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer() as first:
        with pytest.raises(Cancelled):
            label_prompts(teacher(first), prompt_rows(30), out, SETTINGS, CancelAfter(10), chunk=10)
    assert len(first.requests) == 10 and not out.exists()

    with FakeOpenAIServer() as second:
        events = ListEvents()
        report = label_prompts(teacher(second), prompt_rows(30), out, SETTINGS, events, chunk=10)

    assert (report.asked, report.reused, report.kept) == (20, 10, 30)
    assert sorted(second.prompts_asked()) == sorted(f"question {i}" for i in range(10, 30))
    assert [r["id"] for r in read_jsonl(out)] == [f"p{i}" for i in range(30)]
    assert any("reusing 10 answers" in e.get("message", "") for e in events.items)


def test_rerun_asks_again_only_for_prompts_the_teacher_failed(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    failing = {"question 2", "question 7"}
    with FakeOpenAIServer(fault=lambda prompt, attempt: "500" if prompt in failing else None) as first:
        report = label_prompts(teacher(first), prompt_rows(10), out, SETTINGS, ListEvents(),
                               min_success_ratio=0.5)
    assert report.dropped == {"error": 2}

    with FakeOpenAIServer() as second:
        report = label_prompts(teacher(second), prompt_rows(10), out, SETTINGS, ListEvents())
    assert sorted(second.prompts_asked()) == sorted(failing)
    assert (report.asked, report.reused, report.kept, report.dropped) == (2, 8, 10, {})


def test_rerun_after_success_asks_nothing_and_rejudges_with_new_limits(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer() as server:
        label_prompts(teacher(server), prompt_rows(10), out, SETTINGS, ListEvents())
        asked_before = len(server.requests)
        report = label_prompts(teacher(server), prompt_rows(10), out, SETTINGS, ListEvents(),
                               max_answer_chars=len("answer to: question 1"), min_success_ratio=0)
    assert len(server.requests) == asked_before
    assert (report.asked, report.reused, report.kept, report.dropped) == (0, 10, 10, {})

    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), prompt_rows(10), out, SETTINGS, ListEvents(),
                               max_answer_chars=len("answer to: question 1") - 1, min_success_ratio=0)
    assert report.dropped == {"too_long": 10} and not server.requests


@pytest.mark.parametrize("change", ["model", "settings"])
def test_answers_from_another_teacher_or_settings_are_not_reused(tmp_path: Path, change: str) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer() as server:
        label_prompts(teacher(server), prompt_rows(6), out, SETTINGS, ListEvents())
        other = teacher(server, model="bigger-teacher") if change == "model" else teacher(server)
        settings = SETTINGS if change == "model" else GenerationSettings(max_new_tokens=32, temperature=0.7)
        report = label_prompts(other, prompt_rows(6), out, settings, ListEvents())
    assert (report.asked, report.reused) == (6, 0)


def conversations() -> list[dict[str, Any]]:
    """Two conversations ending with the same user turn, told apart by what came before."""
    last = {"role": "user", "content": "Where is order 7?"}
    return [{"id": "c1", "messages": [{"role": "system", "content": "Answer as a pirate."},
                                      {"role": "user", "content": "Hi"},
                                      {"role": "assistant", "content": "Ahoy.", "weight": 0}, last]},
            {"id": "c2", "messages": [{"role": "system", "content": "Be brief."}, last]},
            {"id": "p1", "prompt": "Where is order 7?"}]


def test_a_conversation_is_asked_whole_kept_in_its_labelled_row_and_resumed_by_its_messages(
        tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    judged: list[str] = []

    def validator(prompt: str, answer: str) -> str | None:
        judged.append(prompt)
        return None

    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), conversations(), out, SETTINGS, ListEvents(),
                               validator=validator)
    assert (report.asked, report.kept) == (3, 3)
    sent = sorted(json.dumps(r["body"]["messages"]) for r in server.requests)
    assert sent == sorted(json.dumps(m) for m in (
        [{k: m[k] for k in ("role", "content")} for m in conversations()[0]["messages"]],  # no weight
        conversations()[1]["messages"], [{"role": "user", "content": "Where is order 7?"}]))
    assert judged == ["Where is order 7?"] * 3  # a validator sees the last user turn
    labelled = {r["id"]: r for r in read_jsonl(out)}
    assert labelled["c1"]["messages"] == conversations()[0]["messages"]
    assert (labelled["c1"]["prompt"], labelled["c1"]["answer"]) == ("Where is order 7?",
                                                                    "answer to: Where is order 7?")
    assert "messages" not in labelled["p1"]  # a plain prompt's row is as it always was

    changed = conversations()
    changed[1]["messages"][0]["content"] = "Be very brief."  # same id, same last turn, other system message
    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), changed, out, SETTINGS, ListEvents())
    assert (report.asked, report.reused) == (1, 2)
    assert [r["body"]["messages"][0]["content"] for r in server.requests] == ["Be very brief."]


def test_a_torn_last_line_from_a_killed_run_is_skipped(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer() as server:
        label_prompts(teacher(server), prompt_rows(4), out, SETTINGS, ListEvents())
    partial = partial_path(out)
    partial.write_text(partial.read_text() + '{"id": "p9", "answ')  # killed mid-append
    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), prompt_rows(6), out, SETTINGS, ListEvents())
    assert (report.asked, report.reused, report.kept) == (2, 4, 6)


def test_a_partial_row_whose_id_is_not_a_string_is_not_reused(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer() as server:
        label_prompts(teacher(server), prompt_rows(2), out, SETTINGS, ListEvents())
    partial = partial_path(out)
    partial.write_text(partial.read_text() + '{"id": ["p2"], "prompt": "question 2"}\n')  # hand-edited
    with FakeOpenAIServer() as server:
        report = label_prompts(teacher(server), prompt_rows(3), out, SETTINGS, ListEvents())
    assert (report.asked, report.reused, report.kept) == (1, 2, 3)


def test_a_damaged_partial_file_names_the_line(tmp_path: Path) -> None:
    out = tmp_path / "train.jsonl"
    partial_path(out).write_text('{"id": "p0"\n{"id": "p1"}\n')
    with FakeOpenAIServer() as server:
        with pytest.raises(DataError, match=r"train\.partial\.jsonl:1: malformed JSON; delete"):
            label_prompts(teacher(server), prompt_rows(2), out, SETTINGS, ListEvents())


@pytest.mark.parametrize(("rows", "message"), [
    ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "prompt 1: id 'a' appears twice"),
    ([{"id": "a"}], "prompt 0: field 'prompt' is missing"),
    ([{"prompt": "x"}], "prompt 0: field 'id' is missing"),
    ([{"id": "a", "prompt": "  "}], "prompt 0: field 'prompt' is missing or not a non-empty string"),
])
def test_bad_prompt_rows_are_rejected_before_asking_anything(tmp_path: Path, rows: list[dict],
                                                            message: str) -> None:
    with FakeOpenAIServer() as server:
        with pytest.raises(DataError, match=message):
            label_prompts(teacher(server), rows, tmp_path / "out.jsonl", SETTINGS, ListEvents())
    assert not server.requests


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_answer_chars": 0}, "max_answer_chars"),
    ({"min_success_ratio": 1.5}, "min_success_ratio"),
    ({"chunk": 0}, "chunk"),
])
def test_bad_limits_are_rejected(tmp_path: Path, kwargs: dict, message: str) -> None:
    with FakeOpenAIServer() as server:
        with pytest.raises(ValueError, match=message):
            label_prompts(teacher(server), prompt_rows(2), tmp_path / "out.jsonl", SETTINGS, ListEvents(),
                          **kwargs)


def test_the_task_validator_drops_answers_that_are_not_a_reply_form(tmp_path: Path) -> None:
    from controller.pipeline.task import generate, validate_answer

    gold = generate("train", 20, seed=1)
    answers = {r["prompt"]: r["answer"] for r in gold}
    garbled = {gold[4]["prompt"], gold[11]["prompt"]}

    def answer(prompt: str) -> str:
        return "I am not sure, sorry." if prompt in garbled else answers[prompt]

    out = tmp_path / "train.jsonl"
    with FakeOpenAIServer(answer=answer) as server:
        report = label_prompts(teacher(server), [{k: r[k] for k in ("id", "intent", "prompt")} for r in gold],
                               out, SETTINGS, ListEvents(), validator=validate_answer)

    assert report.dropped == {"invalid": 2}
    labelled = read_jsonl(out)
    assert [r["answer"] for r in labelled] == [r["answer"] for r in gold if r["prompt"] not in garbled]
    assert [r["intent"] for r in labelled] == [r["intent"] for r in gold if r["prompt"] not in garbled]
    assert json.loads(meta_path(out).read_text())["validator"] == "validate_answer"
