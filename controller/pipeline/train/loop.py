"""The training loop: full fine-tune, LoRA, or logit KD from a local teacher, on
``accelerate.Accelerator`` so the same code runs on the CPU, one GPU, or several under
``accelerate launch`` / ``torchrun``. Loss on the answer tokens only; AdamW with linear warmup
and decay; progress and cancellation through ``Events``; checkpoints to resume from; the result
written beside ``out_dir`` and renamed into place, so a failed or cancelled run leaves none."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from controller.pipeline.events import Events
from controller.pipeline.modelkit import load_model, resolve_device
from controller.pipeline.modelkit.files import replace_dir, temp_dir_beside, write_meta
from controller.pipeline.train import checkpoint, data
from controller.pipeline.train import kd as kdmod
from controller.pipeline.train import lora as loramod
from controller.pipeline.train.settings import (
    KDSettings,
    LoraSettings,
    TrainError,
    TrainResult,
    TrainSettings,
)


def train(model_dir: Path | str, examples: Sequence[Any], out_dir: Path, *, work_dir: Path,
          settings: TrainSettings, events: Events, teacher_dir: Path | None = None,
          kd: KDSettings | None = None, lora: LoraSettings | None = None, device: str = "auto",
          task: str = "train", kind: str = "finetuned", meta: Mapping[str, Any] | None = None
          ) -> TrainResult:
    """Train the model in ``model_dir`` (a directory, or a hub id as a str) on ``examples``
    (rows of :mod:`controller.pipeline.chatdata`: conversations or prompt/answer pairs) and
    write the result to ``out_dir``: the whole model (``slmops.json`` kind ``kind``), or with
    ``lora`` the adapter alone (kind "adapter"). ``meta`` adds fields to ``slmops.json``. A
    rerun with the same ``work_dir`` resumes from its last checkpoint."""
    import torch
    from accelerate import Accelerator
    from transformers import get_linear_schedule_with_warmup

    started = time.monotonic()
    # A hub id stays a string for from_pretrained; only a directory is a Path.
    model_dir = model_dir if isinstance(model_dir, Path) else _model_source(model_dir)
    out_dir, work_dir = Path(out_dir), Path(work_dir)
    if kind not in ("finetuned", "distilled"):
        raise TrainError(f"kind must be 'finetuned' or 'distilled' for a trained model, got {kind!r}")
    conversations = data.check_examples(examples)
    if (kd is None) != (teacher_dir is None):
        raise TrainError("logit KD needs both a teacher_dir and kd settings (got only "
                         f"{'teacher_dir' if kd is None else 'kd'})")
    if lora is not None and lora.qlora:
        loramod.check_qlora_available()
    if teacher_dir is not None:
        if not isinstance(model_dir, Path):
            raise TrainError(f"logit KD needs the student's files on disk; {model_dir} is a hub id")
        kdmod.check_same_tokenizer(model_dir, Path(teacher_dir))

    target = resolve_device(device, events)
    accelerator = Accelerator(cpu=target == "cpu")
    if target != "cpu":
        events.log(f"training on {accelerator.device} ({accelerator.num_processes} process(es))")
    torch.manual_seed(settings.seed)  # LoRA initialisation; overwritten by a checkpoint on resume

    model, tokenizer, teacher = _load_models(model_dir, teacher_dir, lora, accelerator.device)

    encoded_set = data.encode_all(tokenizer, conversations, settings.max_length, model=str(model_dir))
    encoded = encoded_set.items
    if not encoded_set.own_template:
        events.log(f"{model_dir} has no chat template: training in the bundled prompt format")
    if encoded_set.truncated:
        events.log(f"{encoded_set.truncated} example(s) longer than max_length {settings.max_length} "
                   "were cut from the left, keeping their last assistant turn")
    if encoded_set.system_dropped:
        events.log(f"{encoded_set.system_dropped} example(s) have a system message, which the prompt "
                   f"format of {model_dir} does not show; they train without it")
    world = accelerator.num_processes
    global_batch = settings.batch_size * world
    per_epoch = data.steps_per_epoch(len(encoded), global_batch)
    total = settings.max_steps or max(1, math.ceil(settings.epochs * per_epoch))
    # Tokens the loss is taken on over the whole run: the batches are a function of (seed, step),
    # so this is known up front and the same after a resume.
    trained_tokens = sum(encoded[i].trained_tokens for step in range(total)
                         for i in data.batch_indices(len(encoded), global_batch, settings.seed, step))
    events.log(f"{task}: {len(encoded)} example(s), {encoded_set.trained_tokens} assistant token(s) "
               f"carry the loss; {trained_tokens} over {total} step(s)")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay)
    # The scheduler is stepped once per global step by us, not prepared by accelerate (which would
    # step it once per process).
    scheduler = get_linear_schedule_with_warmup(optimizer, int(settings.warmup_ratio * total), total)
    model, optimizer = accelerator.prepare(model, optimizer)

    fingerprint = json.loads(json.dumps({
        "model_dir": str(model_dir), "examples": len(conversations),
        "examples_sha256": data.examples_digest(conversations), "teacher_dir": str(teacher_dir or ""),
        "settings": {k: v for k, v in asdict(settings).items() if k not in ("checkpoint_every", "log_every")},
        "kd": asdict(kd) if kd else None, "lora": asdict(lora) if lora else None, "processes": world,
    }))
    ckpt_root = work_dir / "checkpoints"
    start, last_loss = 0, math.nan
    saved = checkpoint.load(ckpt_root)
    if saved is not None:
        differ = checkpoint.fingerprint_diff(saved.fingerprint, fingerprint)
        if differ:
            raise TrainError(f"{ckpt_root} holds a checkpoint of a different training run (differs in "
                             f"{', '.join(differ)}); use another work_dir or delete {ckpt_root} to "
                             "start over")
        _resume(saved, accelerator.unwrap_model(model), optimizer, scheduler, ckpt_root)
        start, last_loss = saved.step, saved.loss
        events.log(f"resuming {task} from the checkpoint at step {start} of {total}")

    pad_id = tokenizer.pad_token_id
    window: list[float] = []
    loop_started = time.monotonic()
    # logits only where the loss is, when the model (and the teacher) can compute them so
    only_answers = all(_keeps_logits(m) for m in (accelerator.unwrap_model(model), teacher) if m is not None)
    for step in range(start, total):
        events.check_cancelled()
        indices = data.shard(data.batch_indices(len(encoded), global_batch, settings.seed, step),
                             accelerator.process_index, world)
        batch = {k: v.to(accelerator.device)
                 for k, v in data.collate([encoded[i] for i in indices], pad_id).items()}
        positions = kdmod.answer_positions(batch["labels"]) if only_answers else None
        keep = {"logits_to_keep": positions} if only_answers else {}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       use_cache=False, **keep).logits
        if teacher is not None and kd is not None:  # both or neither, checked above
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                         use_cache=False, **keep).logits
            loss = kdmod.kd_loss(logits, teacher_logits, batch["labels"], kd, positions)
        else:
            loss = kdmod.answer_ce(logits, batch["labels"], positions)
        accelerator.backward(loss)
        if settings.max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window.append(float(loss.detach()))
        done = step + 1
        if done % settings.log_every == 0 or done == total:
            last_loss = sum(window) / len(window)
            window.clear()
            rate = (time.monotonic() - loop_started) / (done - start)
            events.progress(task, done, total, loss=round(last_loss, 4),
                            eta_s=round(rate * (total - done), 1), unit="step")
        if settings.checkpoint_every and done % settings.checkpoint_every == 0 and done < total:
            _checkpoint(accelerator, model, optimizer, scheduler, ckpt_root, done,
                        sum(window) / len(window) if window else last_loss, fingerprint)

    if start < total:  # the end state too, so a failed write of out_dir resumes right here
        _checkpoint(accelerator, model, optimizer, scheduler, ckpt_root, total, last_loss, fingerprint)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        info = {"base": str(model_dir), "teacher": str(teacher_dir) if teacher_dir else None,
                "train": asdict(settings), "kd": asdict(kd) if kd else None,
                "lora": asdict(lora) if lora else None, "examples": len(encoded),
                "examples_sha256": fingerprint["examples_sha256"], "steps": total,
                "final_loss": last_loss, "trained_tokens": trained_tokens, **dict(meta or {})}
        _write_output(unwrapped, tokenizer, out_dir, lora, kind, info, total)
    accelerator.wait_for_everyone()
    return TrainResult(steps=total, final_loss=last_loss, seconds=time.monotonic() - started,
                       resumed_from_step=start, examples=len(encoded), trained_tokens=trained_tokens)


def _keeps_logits(model: Any) -> bool:
    """Whether the causal LM under ``model`` (a PEFT wrapper passes it on) takes
    ``logits_to_keep`` as positions: transformers' Llama, Qwen2, Phi-3, Gemma, ... do."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def _model_source(ref: str) -> Path | str:
    """A str names a directory when one exists (or it is path-shaped), else a hub id."""
    from controller.pipeline.modelkit.loading import looks_like_path

    return Path(ref).expanduser() if looks_like_path(ref) else ref


def _load_models(model_dir: Path | str, teacher_dir: Path | None, lora: LoraSettings | None,
                 device: Any) -> tuple[Any, Any, Any]:
    """(the model to train, in train mode, LoRA-wrapped if asked; its tokenizer; the frozen
    teacher on ``device`` or None)."""
    if lora is not None and lora.qlora:
        from transformers import AutoTokenizer

        model = loramod.load_qlora_base(model_dir)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
    else:
        model, tokenizer = load_model(model_dir, device="cpu")
    if lora is not None:
        model = loramod.wrap(model, lora, base_ref=str(model_dir))
    model.train()
    teacher = None
    if teacher_dir is not None:
        teacher, _ = load_model(Path(teacher_dir), device="cpu")
        teacher.requires_grad_(False)
        teacher.to(device)
    return model, tokenizer, teacher


def _resume(saved: checkpoint.Checkpoint, model: Any, optimizer: Any, scheduler: Any, root: Path) -> None:
    """Load a checkpoint's trainable weights, optimizer, scheduler and RNG state."""
    import torch

    trainable = dict(_trainable(model))
    missing = sorted(set(trainable) - set(saved.weights))
    if missing:
        raise TrainError(f"checkpoint {root} lacks weights {missing[:3]}; delete it to start over")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(saved.weights[name].to(param.device))
    optimizer.load_state_dict(saved.optimizer)
    scheduler.load_state_dict(saved.scheduler)
    _set_rng(saved.rng)


def _trainable(model: Any) -> list[tuple[str, Any]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def _rng_state() -> dict[str, Any]:
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng(state: Mapping[str, Any]) -> None:
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _checkpoint(accelerator: Any, model: Any, optimizer: Any, scheduler: Any, root: Path, step: int,
                loss: float, fingerprint: Mapping[str, Any]) -> None:
    if accelerator.is_main_process:
        weights = dict(_trainable(accelerator.unwrap_model(model)))
        checkpoint.save(root, step, loss, fingerprint, weights, optimizer.state_dict(),
                        scheduler.state_dict(), _rng_state())
    accelerator.wait_for_everyone()


def _write_output(model: Any, tokenizer: Any, out_dir: Path, lora: LoraSettings | None, kind: str,
                  info: Mapping[str, Any], step: int) -> None:
    from safetensors import SafetensorError  # what save_pretrained raises for a failed write

    tmp = temp_dir_beside(out_dir)
    try:
        if lora is not None:
            loramod.save_adapter(model, tmp, base_ref=str(info["base"]))
            write_meta(tmp, {**info, "kind": "adapter", "params": loramod.trainable_params(model)})
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            write_meta(tmp, {**info, "kind": kind, "params": sum(p.numel() for p in model.parameters())})
        replace_dir(tmp, out_dir)
    except (OSError, SafetensorError) as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise TrainError(f"could not write the trained model to {out_dir}: {e}; free space and rerun "
                         f"(training resumes from the checkpoint at step {step})") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
