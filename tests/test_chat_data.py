"""The training data format: conversations (the OpenAI fine-tuning format) and prompt/answer rows,
refused line by line with the field named, and encoded with the model's own chat template so the
loss falls on assistant turns only (SmolLM2's real ChatML template)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from controller.pipeline.chatdata import read_conversations, read_prompts
from controller.pipeline.jsonl import DataError
from controller.pipeline.train import TrainError
from controller.pipeline.train.data import IGNORE, encode_all

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


def user(text: str = "Hi") -> dict[str, Any]:
    return {"role": "user", "content": text}


def assistant(text: str = "Hello.", **extra: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": text, **extra}


ROLES = "system, user, assistant"
CASES: list[tuple[str, Any, str]] = [
    ("bad role", {"messages": [user(), assistant(), {"role": "bot", "content": "x"}]},
     f"messages[2].role: 'bot' is not one of {ROLES}"),
    ("tool role", {"messages": [user(), {"role": "tool", "content": "x"}]},
     f"messages[1].role: 'tool' is not one of {ROLES}"),
    ("no role", {"messages": [{"content": "Hi"}, assistant()]}, "messages[0].role: missing"),
    ("no content", {"messages": [user(), {"role": "assistant"}]}, "messages[1].content: missing"),
    ("empty content", {"messages": [user("  "), assistant()]}, "messages[0].content: empty"),
    ("content not a string", {"messages": [user(), assistant(7)]},
     "messages[1].content: must be a string, got int"),
    ("messages not a list", {"messages": "Hi"}, "messages: must be a list of messages, got str"),
    ("message not an object", {"messages": ["Hi", assistant()]},
     "messages[0]: must be an object with role and content, got str"),
    ("empty messages", {"messages": []},
     "messages: empty; a conversation needs a user turn and an assistant turn"),
    ("no assistant turn", {"messages": [user()]}, "messages: no assistant turn to train on"),
    ("every turn weight 0", {"messages": [user(), assistant(weight=0)]},
     "messages: every assistant turn has weight 0; nothing to train on"),
    ("weight 2", {"messages": [user(), assistant(weight=2)]}, "messages[1].weight: must be 0 or 1, got 2"),
    ("weight true", {"messages": [user(), assistant(weight=True)]},
     "messages[1].weight: must be 0 or 1, got True"),
    ("weight on a user turn", {"messages": [{**user(), "weight": 1}, assistant()]},
     "messages[0].weight: only assistant turns take a weight"),
    ("system not first", {"messages": [user(), {"role": "system", "content": "x"}, assistant()]},
     "messages[1].role: 'system' is allowed only as the first message"),
    ("assistant first", {"messages": [{"role": "system", "content": "x"}, assistant(), user()]},
     "messages[1].role: the conversation starts with the user's turn (after an optional system message), "
     "got 'assistant'"),
    ("only a system message", {"messages": [{"role": "system", "content": "x"}]},
     "messages: only a system message; a conversation needs a user turn"),
    ("neither shape", {"text": "Hi"},
     'messages: missing (a row is {"messages": [...]} or {"prompt": ..., "answer": ...})'),
    ("both shapes", {**GOOD, "prompt": "Hi"}, "prompt: give either messages or prompt and answer, not both"),
    ("no prompt", {"answer": "Hello."}, "prompt: missing"),
    ("no answer", {"prompt": "Hi"}, "answer: missing"),
    ("empty answer", {"prompt": "Hi", "answer": ""}, "answer: empty"),
    ("empty system", {"prompt": "Hi", "answer": "Hello.", "system": " "}, "system: empty"),
    ("answer not a string", {"prompt": "Hi", "answer": 3}, "answer: must be a string, got int"),
    ("not an object", ["Hi"], "expected a JSON object, got list"),
]


@pytest.mark.parametrize("row, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_row_is_refused_naming_file_line_and_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         row: Any, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    Path("data").mkdir()
    # a good row, a blank line (skipped but counted), then the bad row on line 3
    Path("data/train.jsonl").write_text(json.dumps(GOOD) + "\n\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_conversations(Path("data/train.jsonl"))
    assert str(e.value) == f"data/train.jsonl:3: {message}"


def test_malformed_json_and_an_empty_file_are_refused(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("t.jsonl").write_text(json.dumps(GOOD) + '\n{"messages": [\n')
    with pytest.raises(DataError) as e:
        read_conversations(Path("t.jsonl"))
    assert str(e.value).startswith("t.jsonl:2: malformed JSON (")
    Path("t.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"^t.jsonl: no rows"):
        read_conversations(Path("t.jsonl"))


@pytest.mark.parametrize("row, message", [
    ({"messages": [user(), assistant()]}, "messages[1].role: a prompt ends with the user's turn for the "
                                          "teacher to answer, got 'assistant'"),
    ({"prompt": ""}, "prompt: empty"),
    ({"id": "7"}, 'messages: missing (a prompt is {"messages": [...]} or {"prompt": ...})'),
])
def test_a_bad_prompt_row_is_refused_naming_the_field(tmp_path: Path, row: Any, message: str) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        read_prompts(path)
    assert str(e.value) == f"{path}:1: {message}"


def test_both_shapes_become_conversations_keeping_weights_and_extra_fields(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    rows = [{"id": "a", "messages": [{"role": "system", "content": "Be brief."}, user(), assistant(weight=0),
                                     user("More?"), assistant("No.")]},
            {"id": "b", "prompt": "Hi", "answer": "Hello.", "system": "Be kind."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first, second = read_conversations(path)
    assert first.trained == [4] and first.extra == {"id": "a"} and first.where == f"{path}:1"
    assert first.messages[2] == {"role": "assistant", "content": "Hello.", "weight": 0}
    assert second.plain() == [{"role": "system", "content": "Be kind."}, user(), assistant()]
    assert second.extra == {"id": "b"} and not second.chat


# --- the loss mask on a real chat template -------------------------------------------------------

def spans(tokenizer: Any, ids: list[int], labels: list[int]) -> tuple[list[str], str]:
    """(the labelled runs decoded, every unlabelled token decoded together)."""
    runs: list[list[int]] = [[]]
    for token, label in zip(ids, labels, strict=True):
        if label != IGNORE:
            assert label == token
            runs[-1].append(token)
        elif runs[-1]:
            runs.append([])
    masked = [t for t, label in zip(ids, labels, strict=True) if label == IGNORE]
    return [tokenizer.decode(r) for r in runs if r], tokenizer.decode(masked)


def test_only_assistant_turns_carry_labels_on_smollm2s_chat_template(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    conv = {"messages": [{"role": "system", "content": "Answer in one word."},
                         user("What is the capital of France?"), assistant("Paris."),
                         user("And of Italy?"), assistant("Rome, I think.", weight=0),
                         user("Sure?"), assistant("Yes: Rome.")]}
    encoded = encode_all(tok, [conv, {"prompt": "Hi", "answer": "Hello!"}], max_length=256, model="smollm2")
    assert encoded.own_template and encoded.truncated == 0 and encoded.system_dropped == 0
    first, second = encoded.items
    labelled, masked = spans(tok, first.input_ids, first.labels)
    assert labelled == ["Paris.<|im_end|>", "Yes: Rome.<|im_end|>"]
    for context in ("Answer in one word.", "What is the capital of France?", "Rome, I think.<|im_end|>",
                    "<|im_start|>user\nSure?<|im_end|>\n<|im_start|>assistant\n"):
        assert context in masked
    labelled, masked = spans(tok, second.input_ids, second.labels)
    assert labelled == ["Hello!<|im_end|>"]
    assert masked.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n\n")
    expected = sum(len(tok(t, add_special_tokens=False)["input_ids"])
                   for t in ("Paris.<|im_end|>", "Yes: Rome.<|im_end|>", "Hello!<|im_end|>"))
    assert encoded.trained_tokens == expected


def test_a_long_conversation_is_cut_from_the_left_keeping_its_last_answer(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    conv = {"messages": [user("word " * 80), assistant("First."), user("Again?"), assistant("Second.")]}
    encoded = encode_all(tok, [conv], max_length=48)
    (item,) = encoded.items
    assert encoded.truncated == 1 and len(item.input_ids) == 48
    labelled, _ = spans(tok, item.input_ids, item.labels)
    assert labelled[-1] == "Second.<|im_end|>"
    with pytest.raises(TrainError, match=r"^example 0: \d+ tokens, .* more than training.max_length 8;"):
        encode_all(tok, [{"prompt": "Hi", "answer": "A long answer that will not fit."}], max_length=8)


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_the_model(smollm2_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    # Marks the last message, so a prefix of the conversation renders unlike the whole's beginning.
    tok.chat_template = ("{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['role'] }}: "
                         "{{ m['content'] }}\n{% endfor %}")
    conv = {"messages": [user(), assistant(), user("More?"), assistant("No.")]}
    with pytest.raises(TrainError) as e:
        encode_all(tok, [conv], max_length=64, model="registry:odd")
    assert str(e.value).startswith("example 0: the chat template of registry:odd does not render the "
                                   "conversation up to messages[1] as the beginning of the whole")


def test_distill_prompts_from_conversations_and_labelled_rows_written_back_as_conversations(
        tmp_path: Path) -> None:
    from controller.pipeline.jsonl import read_jsonl, write_jsonl
    from controller.pipeline.steps.distill import as_chat_rows, teacher_prompts

    prompts = tmp_path / "p.jsonl"
    write_jsonl(prompts, [{"messages": [user("Capital of France?")]},
                          {"id": "b", "prompt": "Hi", "intent": "x"}])
    assert teacher_prompts(prompts) == ([{"id": "line-1", "prompt": "Capital of France?"},
                                         {"id": "b", "prompt": "Hi", "intent": "x"}], True)
    labelled = tmp_path / "labelled.jsonl"
    write_jsonl(labelled, [{"id": "line-1", "intent": "unknown", "prompt": "Capital of France?",
                            "answer": "Paris.", "teacher_finish": "stop"}])
    as_chat_rows(labelled)
    assert read_jsonl(labelled) == [{"id": "line-1", "intent": "unknown", "teacher_finish": "stop",
                                     "messages": [user("Capital of France?"), assistant("Paris.")]}]
    (row,) = read_conversations(labelled)
    assert row.trained == [1]
    # a system message (or earlier turns) goes to the teacher with the prompt
    system = {"role": "system", "content": "Be brief."}
    write_jsonl(prompts, [{"messages": [system, user("Capital of France?")]}])
    ((asked,), chat) = teacher_prompts(prompts)
    assert chat and asked["prompt"] == "Capital of France?"
    assert asked["messages"] == [system, user("Capital of France?")]
