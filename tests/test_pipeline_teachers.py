"""Teachers: the OpenAI-compatible one against a fake server speaking real HTTP on loopback
(tests/fake_openai.py), the local one on a tiny model trained here, and the factory."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_openai import FakeOpenAIServer

from controller.pipeline.events import ListEvents
from controller.pipeline.teachers import Answer, GenerationSettings, TeacherError, make_teacher
from controller.pipeline.teachers.openai_compat import OpenAITeacher

SETTINGS = GenerationSettings(max_new_tokens=16)


def fast_teacher(url: str, **overrides: object) -> OpenAITeacher:
    """Retries quickly, so fault tests take milliseconds."""
    args = {"concurrency": 4, "timeout_s": 0.5, "retries": 2, "backoff_s": 0.01, **overrides}
    return OpenAITeacher(url, "fake-teacher", **args)  # type: ignore[arg-type]  # test overrides


def prompts(n: int) -> list[str]:
    return [f"question {i}" for i in range(n)]


# -- OpenAI-compatible endpoint -----------------------------------------------------------------

def test_openai_teacher_answers_every_prompt_in_order() -> None:
    with FakeOpenAIServer() as server:
        events = ListEvents()
        answers = fast_teacher(server.url).generate(prompts(20), GenerationSettings(max_new_tokens=7,
                                                                                   temperature=0.5,
                                                                                   seed=3), events)
    assert answers == [Answer(f"answer to: question {i}", "stop") for i in range(20)]
    body = server.requests[0]["body"]
    assert body["model"] == "fake-teacher"
    assert body["messages"] == [{"role": "user", "content": "question 0"}]
    assert (body["max_tokens"], body["temperature"], body["seed"]) == (7, 0.5, 3)
    assert [e["done"] for e in events.items if e["type"] == "progress"][-1] == 20


CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello.", "weight": 0},
                {"role": "user", "content": "Order 7?"}]


def test_openai_teacher_sends_a_conversation_whole() -> None:
    with FakeOpenAIServer() as server:
        answers = fast_teacher(server.url).generate([CONVERSATION, "question 1"], SETTINGS, ListEvents())
    assert answers == [Answer("answer to: Order 7?", "stop"), Answer("answer to: question 1", "stop")]
    sent = {r["prompt"]: r["body"]["messages"] for r in server.requests}
    assert sent == {"Order 7?": [{"role": m["role"], "content": m["content"]} for m in CONVERSATION],
                    "question 1": [{"role": "user", "content": "question 1"}]}


@pytest.mark.parametrize(("key", "expected"), [("s3cret", "Bearer s3cret"), (None, None)])
def test_api_key_is_read_from_the_named_env_var_and_sent_as_bearer(monkeypatch: pytest.MonkeyPatch,
                                                                   key: str | None,
                                                                   expected: str | None) -> None:
    if key is None:
        monkeypatch.delenv("SLMOPS_TEST_TEACHER_KEY", raising=False)
    else:
        monkeypatch.setenv("SLMOPS_TEST_TEACHER_KEY", key)
    with FakeOpenAIServer() as server:
        teacher = make_teacher({"kind": "openai", "base_url": server.url, "model": "m",
                                "api_key_env": "SLMOPS_TEST_TEACHER_KEY", "retries": 0})
        teacher.generate(prompts(3), SETTINGS, ListEvents())
    assert {r["authorization"] for r in server.requests} == {expected}
    assert "s3cret" not in repr(teacher.identity())


def test_endpoint_that_is_down_fails_fast_with_teacher_error() -> None:
    server = FakeOpenAIServer()
    server.stop()  # nothing listens on its port any more
    with pytest.raises(TeacherError, match=r"teacher endpoint http://127\.0\.0\.1:\d+/v1 is unreachable"):
        fast_teacher(server.url).generate(prompts(100), SETTINGS, ListEvents())


def test_endpoint_that_drops_every_connection_is_probed_with_one_prompt_only() -> None:
    with FakeOpenAIServer(fault=lambda prompt, attempt: "drop") as server:
        with pytest.raises(TeacherError, match="unreachable"):
            fast_teacher(server.url, retries=2).generate(prompts(100), SETTINGS, ListEvents())
    assert server.prompts_asked() == ["question 0"] * 3  # the probe and its 2 retries, nothing else


@pytest.mark.parametrize("status", ["401", "404"])
def test_endpoint_that_rejects_us_stops_after_the_probe(status: str) -> None:
    with FakeOpenAIServer(fault=lambda prompt, attempt: status) as server:
        with pytest.raises(TeacherError, match=f"rejected the request: HTTP {status}"):
            fast_teacher(server.url).generate(prompts(50), SETTINGS, ListEvents())
    assert len(server.requests) == 1  # 4xx is not retried


def test_endpoint_that_goes_away_mid_run_trips_instead_of_hammering() -> None:
    def fault(prompt: str, attempt: int) -> str | None:
        return None if prompt == "question 0" else "drop"

    with FakeOpenAIServer(fault=fault) as server:
        with pytest.raises(TeacherError, match="became unreachable"):
            fast_teacher(server.url, concurrency=2, retries=1).generate(prompts(200), SETTINGS,
                                                                        ListEvents())
    assert len(server.requests) < 40  # not 1 + 199 prompts x 2 attempts


@pytest.mark.parametrize("fault", ["500", "429", "slow", "drop"])
def test_transient_fault_is_retried_and_the_answer_kept(fault: str) -> None:
    with FakeOpenAIServer(fault=lambda prompt, attempt: fault if prompt == "question 2" and attempt == 0
                          else None, slow_s=2.0) as server:
        answers = fast_teacher(server.url).generate(prompts(5), SETTINGS, ListEvents())
    assert answers[2] == Answer("answer to: question 2", "stop")
    assert server.prompts_asked().count("question 2") == 2


@pytest.mark.parametrize(("fault", "expected", "requests"), [
    ("garbage", Answer("", "error", "unparseable response (not JSON): <html>this is not json"), 1),
    ("empty", Answer("", "stop"), 1),
    ("length", Answer("answer to: question 1", "length"), 1),
    ("400", Answer("", "error", 'HTTP 400: {"error": {"message": "fake 400"}}'), 1),
    ("500", Answer("", "error", 'HTTP 500: {"error": {"message": "fake 500"}} (gave up after 3 attempts)'),
     3),
    ("slow", Answer("", "error", "timed out (gave up after 3 attempts)"), 3),
])
def test_lasting_fault_on_one_prompt_becomes_that_prompts_answer(fault: str, expected: Answer,
                                                                 requests: int) -> None:
    with FakeOpenAIServer(fault=lambda prompt, attempt: fault if prompt == "question 1" else None,
                          slow_s=1.0) as server:
        answers = fast_teacher(server.url, timeout_s=0.2).generate(prompts(4), SETTINGS, ListEvents())
    assert answers[1] == expected
    assert [a.finish_reason for i, a in enumerate(answers) if i != 1] == ["stop"] * 3
    assert server.prompts_asked().count("question 1") == requests


def test_retry_after_header_is_honoured() -> None:
    with FakeOpenAIServer(fault=lambda prompt, attempt: "429" if attempt == 0 else None,
                          retry_after="1") as server:
        events = ListEvents()
        answers = fast_teacher(server.url).generate(prompts(1), SETTINGS, events)
    assert answers == [Answer("answer to: question 0", "stop")]
    retries = [e["message"] for e in events.items if e["type"] == "log"]
    assert retries == ["teacher: HTTP 429: {\"error\": {\"message\": \"slow down\"}}; retry 1/2 in 1.0 s "
                       "(Retry-After)"]


# -- the factory and settings ------------------------------------------------------------------

@pytest.mark.parametrize(("spec", "message"), [
    ({"kind": "anthropic"}, r"teacher\.kind: unknown kind 'anthropic'"),
    ({"model": "x"}, r"teacher\.kind: unknown kind None"),
    ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "temprature": 1},
     r"teacher\.temprature: unknown field"),
    ({"kind": "openai", "base_url": "http://h/v1"}, r"teacher\.model: required"),
    ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "concurrency": "8"},
     r"teacher\.concurrency: expected int, got '8'"),
    ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "retries": True},
     r"teacher\.retries: expected int, got True"),
    ({"kind": "openai", "base_url": "http://h/v1", "model": "m", "concurrency": 0},
     r"teacher\.concurrency: expected an integer >= 1, got 0"),
    ({"kind": "openai", "base_url": "h:8000", "model": "m"}, r"teacher\.base_url: 'h:8000' is not an http"),
    ({"kind": "local", "model": "/nonexistent/teacher"}, r"teacher\.model: model path .* does not exist"),
    ({"kind": "local", "model": "m", "base_url": "http://h"},
     r"teacher\.base_url: unknown field for kind 'local'"),
])
def test_make_teacher_rejects_bad_specs_naming_the_field(spec: dict, message: str) -> None:
    with pytest.raises(TeacherError, match=message):
        make_teacher(spec)


@pytest.mark.parametrize(("field", "value"), [
    ("max_new_tokens", 0), ("max_new_tokens", 1.5), ("batch_size", 0), ("seed", -1),
    ("temperature", -0.1), ("temperature", "hot"), ("top_p", 0), ("top_p", 1.5),
])
def test_generation_settings_reject_bad_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"generation setting {field} must be"):
        GenerationSettings(**{field: value})  # type: ignore[arg-type]  # bad on purpose


# -- a local model -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from test_pipeline_evaluate import train_fixed_answer_model  # tests/ is on sys.path

    torch.set_num_threads(1)
    return train_fixed_answer_model(tmp_path_factory.mktemp("fixed"))


def test_local_teacher_answers_and_stops_at_the_end_token(fixed_model: Path) -> None:
    from test_pipeline_evaluate import FIXED_ANSWER

    teacher = make_teacher({"kind": "local", "model": str(fixed_model), "device": "cpu"})
    events = ListEvents()
    answers = teacher.generate(prompts(5), GenerationSettings(max_new_tokens=16, batch_size=2), events)

    assert answers == [Answer(FIXED_ANSWER, "stop")] * 5
    progress = [(e["done"], e["total"]) for e in events.items if e["type"] == "progress"]
    assert progress == [(2, 5), (4, 5), (5, 5)]  # one event per batch


def test_local_teacher_reports_truncation_when_max_new_tokens_is_hit(fixed_model: Path) -> None:
    teacher = make_teacher({"kind": "local", "model": str(fixed_model), "device": "cpu"})
    (answer,) = teacher.generate(["where is my parcel"], GenerationSettings(max_new_tokens=2), ListEvents())
    assert answer.finish_reason == "length"
    assert 0 < len(answer.text) < len("your order has shipped")


def test_local_teacher_samples_reproducibly_with_a_seed(fixed_model: Path) -> None:
    teacher = make_teacher({"kind": "local", "model": str(fixed_model), "device": "cpu"})
    settings = GenerationSettings(max_new_tokens=8, temperature=5.0, seed=7)
    first = teacher.generate(prompts(4), settings, ListEvents())
    again = teacher.generate(prompts(4), settings, ListEvents())
    greedy = teacher.generate(prompts(4), GenerationSettings(max_new_tokens=8), ListEvents())
    assert first == again
    assert first != greedy  # at temperature 5 the fixed answer falls apart


def test_local_teacher_identity_names_the_directory_and_its_weights(fixed_model: Path,
                                                                   tmp_path: Path) -> None:
    import shutil

    teacher = make_teacher({"kind": "local", "model": str(fixed_model), "device": "cpu"})
    identity = teacher.identity()
    assert identity["kind"] == "local" and identity["path"] == str(fixed_model.resolve())
    assert len(identity["sha256"]) == 64

    copy = tmp_path / "copy"
    shutil.copytree(fixed_model, copy)
    (copy / "config.json").write_text((copy / "config.json").read_text() + " ")
    changed = make_teacher({"kind": "local", "model": str(copy), "device": "cpu"}).identity()
    assert changed["sha256"] != identity["sha256"]


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_local_teacher_renders_a_conversation_with_the_models_chat_template(fixed_model: Path,
                                                                              tmp_path: Path) -> None:
    import shutil

    from transformers import AutoTokenizer

    from controller.pipeline import chat
    from controller.pipeline.evaluate.harness import format_prompt

    plain = AutoTokenizer.from_pretrained(fixed_model)  # a plain prompt renders as it always did
    assert format_prompt(plain, "where is my parcel") == chat.prompt_text("where is my parcel")

    chatml = shutil.copytree(fixed_model, tmp_path / "chatml")  # the same model, a template with system
    tokenizer = AutoTokenizer.from_pretrained(chatml)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(chatml)
    teacher = make_teacher({"kind": "local", "model": str(chatml), "device": "cpu"})
    answers = teacher.generate([CONVERSATION, "where is my parcel"], GenerationSettings(max_new_tokens=4),
                               ListEvents())
    assert [a.finish_reason in ("stop", "length") for a in answers] == [True, True]
    assert format_prompt(AutoTokenizer.from_pretrained(chatml), CONVERSATION) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nOrder 7?<|im_end|>\n"
        "<|im_start|>assistant\n")
