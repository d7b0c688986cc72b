"""Training checkpoints in ``work_dir/checkpoints``: the trainable weights, optimizer,
scheduler, RNG state and step, written into a temporary directory, fsynced, and renamed to
``latest``. The previous checkpoint is moved aside only once the new one is complete, so a
failed write (a full disk) or a kill leaves a checkpoint that loads."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from controller.pipeline.modelkit.files import fsync_tree
from controller.pipeline.train.settings import TrainError

LATEST, PREVIOUS = "latest", "previous"  # PREVIOUS exists only between the two renames


@dataclass
class Checkpoint:
    step: int
    loss: float
    fingerprint: dict[str, Any]
    weights: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: dict[str, Any]


def save(root: Path, step: int, loss: float, fingerprint: Mapping[str, Any], weights: Mapping[str, Any],
         optimizer: Mapping[str, Any], scheduler: Mapping[str, Any], rng: Mapping[str, Any]) -> None:
    """Write a checkpoint of ``step`` and make it ``latest``. An OSError while writing removes
    the partial directory and raises TrainError naming the step still intact."""
    import torch
    from safetensors.torch import save as to_safetensors

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    intact = intact_step(root)
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        # Serialized in memory and written by Python, so a write failure is an OSError
        # (safetensors' own save_file raises SafetensorError for it).
        blob = to_safetensors({k: v.detach().contiguous().cpu() for k, v in weights.items()})
        (tmp / "weights.safetensors").write_bytes(blob)
        torch.save(dict(optimizer), tmp / "optimizer.pt")
        torch.save(dict(scheduler), tmp / "scheduler.pt")
        torch.save(dict(rng), tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "loss": loss,
                                                    "fingerprint": dict(fingerprint)}, indent=2),
                                        encoding="utf-8")
        fsync_tree(tmp)
        _promote(root, tmp)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        still = (f"the checkpoint from step {intact} is intact, free space and rerun to resume"
                 if intact is not None else "there is no earlier checkpoint; free space and rerun")
        raise TrainError(f"could not write checkpoint at step {step}: {e}; {still}") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _promote(root: Path, tmp: Path) -> None:
    latest, previous = root / LATEST, root / PREVIOUS
    if latest.exists():
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(latest, previous)
    os.replace(tmp, latest)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    shutil.rmtree(previous, ignore_errors=True)


def _current(root: Path) -> Path | None:
    for name in (LATEST, PREVIOUS):  # PREVIOUS alone: killed between the two renames
        path = Path(root) / name
        if (path / "state.json").is_file():
            return path
    return None


def intact_step(root: Path) -> int | None:
    """The step of the checkpoint a rerun would resume from, or None."""
    path = _current(root)
    if path is None:
        return None
    return int(json.loads((path / "state.json").read_text(encoding="utf-8"))["step"])


def load(root: Path) -> Checkpoint | None:
    """The latest complete checkpoint under ``root``, or None if there is none."""
    import torch
    from safetensors.torch import load_file

    path = _current(root)
    if path is None:
        return None
    try:
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        return Checkpoint(
            step=int(state["step"]), loss=float(state["loss"]), fingerprint=state["fingerprint"],
            weights=load_file(str(path / "weights.safetensors")),
            optimizer=torch.load(path / "optimizer.pt", weights_only=True),
            scheduler=torch.load(path / "scheduler.pt", weights_only=True),
            rng=torch.load(path / "rng.pt", weights_only=True),
        )
    except (OSError, KeyError, ValueError, RuntimeError) as e:
        raise TrainError(f"checkpoint {path} can't be read ({e}); delete {root} to start over") from e


def fingerprint_diff(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Keys (dotted) whose values differ between two fingerprints."""
    diffs: list[str] = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key), current.get(key)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            diffs += [f"{key}.{sub}" for sub in fingerprint_diff(a, b)]
        elif a != b:
            diffs.append(key)
    return diffs
