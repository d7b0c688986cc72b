"""Training: answer-only loss, full fine-tune, LoRA (+ merge), logit KD, cancel, checkpoints
and resume, and a full disk while checkpointing. Tiny models, a few dozen steps each."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from controller.pipeline import chat
from controller.pipeline.events import Cancelled, ListEvents
from controller.pipeline.modelkit import build_model, load_model, read_meta, train_tokenizer
from controller.pipeline.task import ALL_INTENTS, NEW_INTENTS, generate
from controller.pipeline.train import (
    KDSettings,
    LoraSettings,
    TrainError,
    TrainSettings,
    check_same_tokenizer,
    merge_adapter,
    train,
)
from controller.pipeline.train import checkpoint as ckpt
from controller.pipeline.train.data import IGNORE, encode
from controller.pipeline.train.kd import answer_ce, kd_loss

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 512-token tokenizer trained on the task, and a tiny model (~0.1 M params) on it."""
    root = tmp_path_factory.mktemp("kit")
    rows = generate("train", 1500, intents=ALL_INTENTS)
    tok = train_tokenizer([chat.full_text(r["prompt"], r["answer"]) for r in rows], root / "tok",
                          vocab_size=512)
    return {"tok": tok, "base": build_model("tiny", tok, root / "base", seed=0), "root": root}


def settings(**overrides: Any) -> TrainSettings:
    return TrainSettings(**{"batch_size": 16, "max_steps": 20, "log_every": 5, "checkpoint_every": 0,
                            **overrides})


def greedy(model_dir: Path, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    model, tok = load_model(model_dir, device="cpu")
    enc = tok([chat.prompt_text(p) for p in prompts], return_tensors="pt", padding=True,
              padding_side="left", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return [chat.clean_answer(tok.decode(o[enc["input_ids"].shape[1]:])) for o in out]


class CancelAfter(ListEvents):
    """Asks for a cancel once progress reaches ``step`` (as `slmops jobs cancel` would)."""

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def progress(self, task: str, done: float, total: float, **fields: Any) -> None:
        super().progress(task, done, total, **fields)
        if done >= self.step:
            self.request_cancel()


def test_only_the_answer_and_end_carry_labels(kit: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(kit["tok"])
    prompt, answer = "Are you open on Sunday?", "On Sunday we are closed."
    item = encode(tok, prompt, answer, max_length=128)
    labelled = [i for i, label in zip(item.input_ids, item.labels, strict=True) if label != IGNORE]
    masked = [i for i, label in zip(item.input_ids, item.labels, strict=True) if label == IGNORE]
    assert tok.decode(labelled) == answer + chat.END
    assert tok.decode(masked) == chat.prompt_text(prompt)
    # Too long: cut from the left, the answer kept whole; refused when even that can't be.
    short = encode(tok, prompt, answer, max_length=len(labelled) + 3)
    assert short.truncated and len(short.input_ids) == len(labelled) + 3
    assert tok.decode([i for i, label in zip(short.input_ids, short.labels, strict=True)
                       if label != IGNORE]) == answer + chat.END
    with pytest.raises(TrainError, match="example 0: .* more than training.max_length"):
        encode(tok, prompt, answer, max_length=len(labelled))


@pytest.fixture(scope="module")
def easy(kit: dict[str, Path]) -> dict[str, Any]:
    """The tiny model trained on one easy intent: the test below checks it, and it serves as the
    base of the LoRA test and the teacher of the KD test."""
    out = kit["root"] / "easy"
    events = ListEvents()
    result = train(kit["base"], generate("train", 400, intents=("opening_hours",)), out,
                   work_dir=kit["root"] / "easy-work", settings=settings(max_steps=150, log_every=10),
                   events=events, task="teacher/train")
    return {"dir": out, "events": events, "result": result}


def test_training_lowers_the_loss_and_learns_an_easy_intent_exactly(kit: dict[str, Path],
                                                                    easy: dict[str, Any]) -> None:
    events, result = easy["events"], easy["result"]
    losses = [e["loss"] for e in events.items if e["type"] == "progress"]
    assert len(losses) == 15 and losses[-1] < losses[0] / 10
    assert all(e["task"] == "teacher/train" and e["unit"] == "step" and "eta_s" in e
               for e in events.items if e["type"] == "progress")
    assert (result.steps, result.resumed_from_step, result.examples) == (150, 0, 400)
    assert math.isclose(result.final_loss, losses[-1], rel_tol=1e-3)
    test = generate("test", 20, intents=("opening_hours",))
    answers = greedy(easy["dir"], [r["prompt"] for r in test])
    assert sum(a == r["answer"] for a, r in zip(answers, test, strict=True)) >= 18
    meta = read_meta(easy["dir"])
    assert meta["kind"] == "finetuned" and meta["base"] == str(kit["base"])
    assert meta["examples"] == 400 and meta["train"]["max_steps"] == 150


def test_cancel_leaves_no_output_and_a_rerun_resumes_to_the_same_weights(kit: dict[str, Path],
                                                                           tmp_path: Path) -> None:
    from safetensors.torch import load_file

    examples = generate("train", 200, seed=1)
    straight = train(kit["base"], examples, tmp_path / "straight", work_dir=tmp_path / "w1",
                     settings=settings(max_steps=30), events=ListEvents())
    assert straight.resumed_from_step == 0

    run = settings(max_steps=30, checkpoint_every=10)
    with pytest.raises(Cancelled):
        train(kit["base"], examples, tmp_path / "out", work_dir=tmp_path / "w2", settings=run,
              events=CancelAfter(25))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs
    assert ckpt.intact_step(tmp_path / "w2" / "checkpoints") == 20

    events = ListEvents()
    resumed = train(kit["base"], examples, tmp_path / "out", work_dir=tmp_path / "w2", settings=run,
                    events=events)
    assert resumed.resumed_from_step == 20 and resumed.steps == 30
    assert {"type": "log", "message": "resuming train from the checkpoint at step 20 of 30"} in events.items
    assert [e["done"] for e in events.items if e["type"] == "progress"] == [25, 30]
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)  # same data order, optimizer and RNG state

    again = train(kit["base"], examples, tmp_path / "out", work_dir=tmp_path / "w2", settings=run,
                  events=ListEvents())
    assert again.resumed_from_step == 30 and again.final_loss == resumed.final_loss


def test_a_checkpoint_of_another_run_is_not_resumed(kit: dict[str, Path], tmp_path: Path) -> None:
    examples = generate("train", 64, seed=2)
    train(kit["base"], examples, tmp_path / "a", work_dir=tmp_path / "w", settings=settings(max_steps=4),
          events=ListEvents())
    with pytest.raises(TrainError) as e:
        train(kit["base"], examples, tmp_path / "b", work_dir=tmp_path / "w",
              settings=settings(max_steps=4, learning_rate=1e-3), events=ListEvents())
    assert ("holds a checkpoint of a different training run (differs in settings.learning_rate)"
            in str(e.value))
    assert not (tmp_path / "b").exists()


DISK_FULL_CHILD = textwrap.dedent("""
    import resource, signal, sys, torch
    from pathlib import Path
    from controller.pipeline.events import ListEvents
    from controller.pipeline.task import generate
    from controller.pipeline.train import TrainError, TrainSettings, train

    torch.set_num_threads(1)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-large write then fails with EFBIG

    class FillDiskAfterFirstCheckpoint(ListEvents):
        def progress(self, task, done, total, **fields):
            if done > 10:  # the checkpoint of step 10 is written; no file may grow past 4 KiB now
                resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    base, out, work = map(Path, sys.argv[1:4])
    try:
        train(base, generate("train", 64, seed=3), out, work_dir=work, events=FillDiskAfterFirstCheckpoint(),
              settings=TrainSettings(batch_size=8, max_steps=30, log_every=5, checkpoint_every=10))
    except TrainError as e:
        print(e)
        sys.exit(3)
""")


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(kit: dict[str, Path],
                                                                       tmp_path: Path) -> None:
    out, work = tmp_path / "out", tmp_path / "work"
    child = subprocess.run([sys.executable, "-c", DISK_FULL_CHILD, str(kit["base"]), str(out), str(work)],
                           capture_output=True, text=True, timeout=120, cwd=REPO,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    assert child.returncode == 3, child.stderr
    message = child.stdout.strip()
    assert message.startswith("could not write checkpoint at step 20: [Errno 27] File too large")
    assert message.endswith("; the checkpoint from step 10 is intact, free space and rerun to resume")
    assert sorted(p.name for p in (work / "checkpoints").iterdir()) == ["latest"]  # partial one removed
    assert ckpt.load(work / "checkpoints").step == 10
    assert not out.exists()

    resumed = train(kit["base"], generate("train", 64, seed=3), out, work_dir=work, events=ListEvents(),
                    settings=TrainSettings(batch_size=8, max_steps=30, log_every=5, checkpoint_every=10))
    assert resumed.resumed_from_step == 10 and resumed.steps == 30
    assert read_meta(out)["kind"] == "finetuned"


def test_lora_names_the_linear_modules_when_a_target_is_missing(kit: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainError) as e:
        train(kit["base"], generate("train", 16), tmp_path / "out", work_dir=tmp_path / "w",
              settings=settings(max_steps=2), events=ListEvents(),
              lora=LoraSettings(target_modules=("q_proj", "query_key_value")))
    assert str(e.value) == ("lora.target_modules ['query_key_value'] not found in the model; its linear "
                            "modules are: down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, "
                            "v_proj")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine with no GPU")
def test_qlora_without_a_gpu_says_so(kit: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(TrainError, match="lora.qlora needs a CUDA GPU and none is available here"):
        train(kit["base"], generate("train", 16), tmp_path / "out", work_dir=tmp_path / "w",
              settings=settings(max_steps=2), events=ListEvents(), lora=LoraSettings(qlora=True))


def test_a_lora_adapter_is_small_and_merged_answers_match_unmerged(easy: dict[str, Any],
                                                                   tmp_path: Path) -> None:
    base, adapter, merged = easy["dir"], tmp_path / "adapter", tmp_path / "merged"
    events = ListEvents()
    train(base, generate("train", 200, intents=NEW_INTENTS), adapter, work_dir=tmp_path / "w",
          settings=settings(max_steps=40, learning_rate=1e-2), events=events, lora=LoraSettings())
    losses = [e["loss"] for e in events.items if e["type"] == "progress"]
    assert losses[-1] < losses[0] - 1.0  # a tiny base's output layer limits how far LoRA alone gets
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors",
                                                         "slmops.json"]
    meta = read_meta(adapter)
    assert meta["kind"] == "adapter" and meta["base"] == str(base)
    base_bytes = (base / "model.safetensors").stat().st_size
    assert (adapter / "adapter_model.safetensors").stat().st_size < 0.25 * base_bytes
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(base)

    merge_adapter(base, adapter, merged)
    assert read_meta(merged)["kind"] == "finetuned" and read_meta(merged)["adapter"] == str(adapter)
    prompts = [r["prompt"] for r in generate("test", 6, intents=ALL_INTENTS)]
    unmerged_answers = greedy(adapter, prompts)  # load_model applies the adapter to its base
    assert greedy(merged, prompts) == unmerged_answers
    assert unmerged_answers != greedy(base, prompts)  # the adapter changed the model


@pytest.fixture(scope="module")
def other_tokenizers(kit: dict[str, Path]) -> dict[str, Path]:
    """Tokenizers that differ from kit's: other texts (same size), another size, another EOS."""
    from transformers import AutoTokenizer

    root = kit["root"]
    # Enough distinct text to fill 512 tokens (digits never merge, so one intent alone does not).
    texts = [chat.full_text(r["prompt"], r["answer"])
             for r in generate("val", 300, intents=("password_reset", *NEW_INTENTS))]
    eos = AutoTokenizer.from_pretrained(kit["tok"], eos_token=chat.PAD)
    eos.save_pretrained(root / "tok-eos")
    return {"other texts": train_tokenizer(texts, root / "tok-texts", vocab_size=512),
            "other size": train_tokenizer(texts, root / "tok-size", vocab_size=400),
            "other eos": root / "tok-eos"}


@pytest.mark.parametrize("which, message", [
    ("other texts", "logit KD: vocabularies differ: token "),
    ("other size", "logit KD: vocabulary sizes differ: student 512, teacher 400"),
    ("other eos", "logit KD: eos_token differs: student '<|end|>', teacher '<|pad|>'"),
])
def test_logit_kd_refuses_a_teacher_with_another_tokenizer(kit: dict[str, Path], other_tokenizers: dict,
                                                           which: str, message: str) -> None:
    with pytest.raises(TrainError) as e:
        check_same_tokenizer(kit["base"], other_tokenizers[which])
    assert str(e.value).startswith(message)
    assert "logit KD needs one tokenizer for both" in str(e.value)


def test_training_with_logit_kd_stops_before_a_step_on_a_tokenizer_mismatch(
        kit: dict[str, Path], other_tokenizers: dict, tmp_path: Path) -> None:
    teacher = build_model("tiny", other_tokenizers["other size"], tmp_path / "teacher")
    events = ListEvents()
    with pytest.raises(TrainError, match="vocabulary sizes differ"):
        train(kit["base"], generate("train", 16), tmp_path / "out", work_dir=tmp_path / "w",
              settings=settings(max_steps=2), events=events, teacher_dir=teacher, kd=KDSettings())
    assert not [e for e in events.items if e["type"] == "progress"]


def test_logit_kd_trains_the_student_toward_the_teacher(kit: dict[str, Path], easy: dict[str, Any],
                                                        tmp_path: Path) -> None:
    examples = generate("train", 200, intents=("opening_hours",), seed=4)
    teacher = easy["dir"]
    student = build_model("tiny", kit["tok"], tmp_path / "student", seed=5)
    events = ListEvents()
    result = train(student, examples, tmp_path / "out", work_dir=tmp_path / "ws", events=events,
                   settings=settings(max_steps=40), teacher_dir=teacher,
                   kd=KDSettings(temperature=2.0, alpha=0.5), kind="distilled", meta={"recipe": "x"})
    losses = [e["loss"] for e in events.items if e["type"] == "progress"]
    assert losses[-1] < losses[0] / 2 and math.isfinite(result.final_loss)
    meta = read_meta(tmp_path / "out")
    assert meta["kind"] == "distilled" and meta["teacher"] == str(teacher) and meta["recipe"] == "x"
    assert meta["kd"] == {"temperature": 2.0, "alpha": 0.5}


def test_the_kd_loss_is_the_cross_entropy_at_alpha_0_and_adds_no_kl_for_an_identical_teacher() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 3, 4, 5, IGNORE], [IGNORE, 1, 2, 3, 4, 5]])
    ce = answer_ce(logits, labels)
    assert torch.allclose(kd_loss(logits, torch.randn(2, 6, 11), labels, KDSettings(alpha=0.0)), ce)
    assert torch.allclose(kd_loss(logits, logits, labels, KDSettings(alpha=0.5)), 0.5 * ce)
    other = logits.clone()
    other[0, 0] += 5  # a prompt position: no effect on the loss
    assert torch.allclose(kd_loss(logits, other, labels, KDSettings(alpha=1.0)), torch.tensor(0.0), atol=1e-6)


def test_logits_kept_only_where_the_loss_is_give_the_same_losses_and_gradients() -> None:
    """Training asks the model for logits at answer_positions only (logits_to_keep); the losses
    and the gradients are those of the full logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from controller.pipeline.train.kd import answer_positions

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=2, num_attention_heads=2,
                                         num_key_value_heads=2))
    ids = torch.randint(3, 40, (2, 9))
    labels = torch.full_like(ids, IGNORE)
    labels[0, 5:8], labels[1, 3:9] = ids[0, 5:8], ids[1, 3:9]
    positions = answer_positions(labels)
    assert positions.tolist() == [2, 3, 4, 5, 6, 7]
    teacher = torch.randn(2, 9, 40)
    full = model(input_ids=ids).logits
    kept = model(input_ids=ids, logits_to_keep=positions).logits
    assert kept.shape == (2, 6, 40)
    for loss_full, loss_kept in (
            (answer_ce(full, labels), answer_ce(kept, labels, positions)),
            (kd_loss(full, teacher, labels, KDSettings()),
             kd_loss(kept, teacher[:, positions], labels, KDSettings(), positions))):
        assert torch.allclose(loss_full, loss_kept, atol=1e-6)
        grads = [torch.autograd.grad(loss, model.model.embed_tokens.weight, retain_graph=True)[0]
                 for loss in (loss_full, loss_kept)]
        assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("factory, fields, message", [
    (TrainSettings, {"learning_rate": 0}, "train.learning_rate must be a number in (0, 1], got 0"),
    (TrainSettings, {"batch_size": 0}, "train.batch_size must be an integer >= 1, got 0"),
    (TrainSettings, {"batch_size": 2.5}, "train.batch_size must be an integer >= 1, got 2.5"),
    (TrainSettings, {"epochs": -1}, "train.epochs must be a number > 0, got -1"),
    (TrainSettings, {"max_steps": -3}, "train.max_steps must be an integer >= 0, got -3"),
    (TrainSettings, {"max_length": 4}, "train.max_length must be an integer >= 8, got 4"),
    (TrainSettings, {"warmup_ratio": 1.0}, "train.warmup_ratio must be a number in [0, 1), got 1.0"),
    (TrainSettings, {"seed": "x"}, "train.seed must be an integer >= 0, got 'x'"),
    (TrainSettings, {"learning_rate": float("nan")}, "train.learning_rate must be a number in (0, 1], "
                                                     "got nan"),
    (KDSettings, {"temperature": 0}, "kd.temperature must be a number > 0, got 0"),
    (KDSettings, {"alpha": 1.5}, "kd.alpha must be a number in [0, 1], got 1.5"),
    (LoraSettings, {"r": 0}, "lora.r must be an integer >= 1, got 0"),
    (LoraSettings, {"dropout": 1}, "lora.dropout must be a number in [0, 1), got 1"),
    (LoraSettings, {"target_modules": "q_proj"}, "lora.target_modules must be a list of module names"),
    (LoraSettings, {"target_modules": []}, "lora.target_modules must be a non-empty list"),
])
def test_settings_name_the_bad_field_and_value(factory: type, fields: dict, message: str) -> None:
    with pytest.raises(TrainError) as e:
        factory(**fields)
    assert message in str(e.value)


@pytest.mark.parametrize("examples, kwargs, message", [
    ([], {}, "no training examples"),
    ([{"prompt": "hi", "answer": ""}], {}, "example 0: answer: empty"),
    ([{"id": "r7", "answer": "x"}], {}, "example 0: prompt: missing"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], {}, "example 0: messages: no assistant turn"),
    ([{"prompt": "hi", "answer": "x"}], {"kd": KDSettings()}, "logit KD needs both a teacher_dir and kd"),
])
def test_bad_training_input_is_refused_before_any_step(kit: dict[str, Path], tmp_path: Path,
                                                       examples: list, kwargs: dict, message: str) -> None:
    with pytest.raises(TrainError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train(kit["base"], examples, tmp_path / "out", work_dir=tmp_path / "w", settings=settings(),
              events=ListEvents(), **kwargs)
    assert not (tmp_path / "out").exists()


def test_examples_too_long_for_max_length_are_cut_from_the_left_and_reported(kit: dict[str, Path],
                                                                              tmp_path: Path) -> None:
    events = ListEvents()
    rows = generate("train", 8, intents=("opening_hours",)) + [{"prompt": "word " * 70, "answer": "x"}]
    result = train(kit["base"], rows, tmp_path / "out", work_dir=tmp_path / "w", events=events,
                   settings=settings(max_steps=2, max_length=64))
    assert result.examples == 9 and result.trained_tokens > 0
    logs = [e["message"] for e in events.items if e["type"] == "log"]
    assert ("1 example(s) longer than max_length 64 were cut from the left, keeping their last "
            "assistant turn") in logs


def test_an_answer_longer_than_max_length_is_refused_naming_the_example(kit: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    rows = generate("train", 2, intents=("opening_hours",)) + [{"prompt": "hi", "answer": "word " * 70}]
    with pytest.raises(TrainError, match=r"example 2: \d+ tokens, and its last assistant turn"):
        train(kit["base"], rows, tmp_path / "out", work_dir=tmp_path / "w", events=ListEvents(),
              settings=settings(max_steps=2, max_length=64))
    assert not (tmp_path / "out").exists()
