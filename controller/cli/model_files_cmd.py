"""`slmops models import | export | delete`: a pretrained model in, a version's files out, a
version removed. Registered on the `models` group (models_cmd.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import click

from controller.cli import views
from controller.cli.follow import follow, interrupted, require_success
from controller.cli.output import CliError, console, emit, json_option
from controller.cli.pipeline_client import PipelineClient
from controller.settings import default_data_dir
from protos import pipeline_pb2

GGUF_MAGIC = b"GGUF"


def _local_source(source: str) -> tuple[str, Path | None]:
    """(the source as sent, the local file or directory); hub ids stay strings. One-line
    errors for what can't be imported, before anything is uploaded."""
    if source.startswith("hf:"):
        return source, None
    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CliError(f"{source}: no config.json; a Hugging Face model directory has config.json, "
                           "the weights (*.safetensors) and the tokenizer files (save it with "
                           "save_pretrained, or give a .gguf file or hf:ORG/NAME)", "invalid_argument", 2)
        return path.resolve().name, path
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise CliError(f"{source}: not a GGUF file (it does not start with the GGUF magic bytes); "
                               "give a .gguf file, a Hugging Face model directory or hf:ORG/NAME",
                               "invalid_argument", 2)
        name = path.name if path.name.lower().endswith(".gguf") else path.name + ".gguf"
        return name, path
    raise CliError(f"{source}: no such file or directory; give a .gguf file, a Hugging Face model "
                   "directory or hf:ORG/NAME", "invalid_argument", 2)


def _directory_files(sent: str, path: Path) -> dict[str, Path]:
    files = {}
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # .git, .cache: not the model's
        for name in sorted(names):
            full = Path(root) / name
            if not name.startswith(".") and full.is_file():
                files[f"{sent}/{full.relative_to(path).as_posix()}"] = full
    return files


def _import_local(source: str, path: Path | None, name: str, data_dir: Path, as_json: bool) -> dict[str, Any]:
    """The same one-step recipe, run in this process against the registry in ``data_dir``."""
    from controller.pipeline.events import Cancelled, Events
    from controller.pipeline.local import default_work_dir
    from controller.pipeline.recipe import RecipeError, parse_recipe
    from controller.pipeline.rich_events import RichEvents
    from controller.pipeline.runner import RunError, run_recipe
    from controller.pipeline.steps.import_model import import_recipe_text
    from controller.registry import ModelRegistry

    text = import_recipe_text(str(path.resolve()) if path is not None else source, name)
    try:
        recipe = parse_recipe(text, "import")
    except RecipeError as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    data_dir.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(f"sqlite:///{data_dir / 'fleet.db'}", data_dir / "models")
    try:
        work = default_work_dir(data_dir, recipe)
        if as_json:
            result = run_recipe(recipe, work, Events(), base_dir=Path.cwd())
        else:
            with RichEvents() as events:
                result = run_recipe(recipe, work, events, base_dir=Path.cwd())
        (record,) = registry.register(result.entries, job_id=f"local-{uuid.uuid4().hex[:12]}")
        shutil.rmtree(work, ignore_errors=True)  # the registry has its copy
    except RecipeError as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    except RunError as e:
        raise CliError(str(e), "failed") from None
    except (KeyboardInterrupt, Cancelled):
        raise CliError("interrupted; run the same command again", "interrupted", 130) from None
    finally:
        registry.close()
    return {"models": [record.ref], "status": "succeeded", "data_dir": str(data_dir)}


@click.command("import")
@click.argument("source")
@click.option("--name", required=True, help="the registry name; the version is the next one")
@click.option("--local", "local", is_flag=True, help="import here, in this process, without a controller")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="with --local: the registry's directory (default ~/.local/share/slmops/controller)")
@json_option
@click.pass_obj
def import_(obj: dict, source: str, name: str, local: bool, data_dir: Path | None, as_json: bool) -> None:
    """Register a pretrained model: SOURCE is a .gguf file, a Hugging Face model directory, or
    hf:ORG/NAME (downloaded by the controller: it needs a network). Runs as a job on the
    controller (the file or the directory's files are uploaded) and follows it to the end."""
    from controller.registry import check_name
    from controller.validation import Invalid

    try:
        check_name("--name", name)
    except Invalid as e:
        raise CliError(str(e), "invalid_argument", 2) from None
    sent, path = _local_source(source)
    if local:
        if path is not None and path.is_file() and not path.name.lower().endswith(".gguf"):
            raise CliError(f"{source}: with --local a GGUF file's name ends in .gguf", "invalid_argument", 2)
        data = _import_local(source, path, name, data_dir or default_data_dir(), as_json)
        emit(data, as_json, lambda d: console.print(f"imported {source} as {d['models'][0]} in "
                                                    f"{d['data_dir']}", highlight=False))
        return
    if data_dir is not None:
        raise CliError("--data-dir goes with --local; an import runs on the controller",
                       "invalid_argument", 2)
    files: dict[str, Path] = {}
    if path is not None:
        files = _directory_files(sent, path) if path.is_dir() else {sent: path}
    client = PipelineClient(obj["config"])
    if not as_json:
        console.print(f"uploading {len(files)} file(s) of {source}" if files else
                      f"asking the controller to download {source}", highlight=False)
    job = client.import_model(sent, name, files)
    try:
        job = follow(client, job.id, show=not as_json)
    except KeyboardInterrupt:
        raise interrupted(job.id) from None
    require_success(job)
    emit(views.job(job), as_json, lambda j: console.print(
        f"imported {source} as {', '.join(j['models'])} (see `slmops models show "
        f"{j['models'][0] if j['models'] else name}`)", highlight=False))


def _receive(responses: Any, tmp: Path) -> tuple[pipeline_pb2.ExportHeader, list[str]]:
    header: pipeline_pb2.ExportHeader | None = None
    listing: list[str] = []
    order: list[str] = []
    current, out, digest, size = "", None, hashlib.sha256(), 0

    def close() -> None:
        if out is not None:
            out.close()
            listing.append(f"{current}\0{size}\0{digest.hexdigest()}\n")

    for response in responses:
        if response.WhichOneof("part") == "header":
            header = response.header
            order = [f.path for f in header.files]
            continue
        chunk = response.file
        if header is None:
            raise CliError("the controller sent files before their list", "internal")
        if chunk.path != current:
            close()
            expected = order[len(listing)] if len(listing) < len(order) else None
            if chunk.path != expected:  # never a path we did not ask for, in the order listed
                raise CliError(f"the controller sent {chunk.path!r}, expected {expected!r}", "internal")
            target = tmp / chunk.path
            target.parent.mkdir(parents=True, exist_ok=True)
            current, out, digest, size = chunk.path, target.open("wb"), hashlib.sha256(), 0
        assert out is not None
        out.write(chunk.data)
        digest.update(chunk.data)
        size += len(chunk.data)
    close()
    if header is None:
        raise CliError("the controller sent nothing", "internal")
    return header, listing


@click.command("export")
@click.argument("ref")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="the directory to write (must not exist)")
@click.option("--profile", default="", help="export this device variant instead of the model "
                                            "(or write NAME:VERSION@PROFILE)")
@json_option
@click.pass_obj
def export(obj: dict, ref: str, out: Path, profile: str, as_json: bool) -> None:
    """Write a model version's files (a Hugging Face directory), or one of its built variants'
    (REF@PROFILE or --profile), into a new directory OUT. Every file is checked against the
    digest recorded when it was registered; OUT appears only when all of it is there."""
    if "@" in ref:
        ref, at = ref.split("@", 1)
        if profile and profile != at:
            raise CliError(f"--profile {profile} and @{at}: name the profile once", "invalid_argument", 2)
        profile = at
    if out.exists():
        raise CliError(f"--out {out}: already exists; choose a new directory", "invalid_argument", 2)
    out.parent.mkdir(parents=True, exist_ok=True)
    client = PipelineClient(obj["config"])
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part"))
    try:
        header, listing = _receive(client.export_model(ref, profile), tmp)
        if len(listing) != len(header.files) or \
                hashlib.sha256("".join(listing).encode()).hexdigest() != header.sha256:
            raise CliError(f"the files of {header.ref}{'@' + profile if profile else ''} don't match the "
                           "digest recorded when it was registered; check them with `slmops models "
                           "verify`", "data_loss")
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    data = {"ref": header.ref, "profile": header.profile, "out": str(out), "files": len(header.files),
            "size_bytes": sum(f.size_bytes for f in header.files), "sha256": header.sha256}
    emit(data, as_json, lambda d: console.print(
        f"exported {d['ref']}{' ' + d['profile'] + ' variant' if d['profile'] else ''}: {d['files']} "
        f"files, {d['size_bytes'] / 2**20:.1f} MiB in {d['out']}", highlight=False))


@click.command("delete")
@click.argument("ref")
@json_option
@click.pass_obj
def delete(obj: dict, ref: str, as_json: bool) -> None:
    """Delete the version NAME:VERSION: its registry rows, evaluations, variants and files.
    Refused, naming who uses it, while a device or an active rollout deploys it or another
    version (a LoRA adapter, a fine-tune, a distilled student) is built on it."""
    client = PipelineClient(obj["config"])
    r = client.call(client.pipeline.DeleteModel, pipeline_pb2.DeleteModelRequest(ref=ref))
    data = {"deleted": f"{r.model.name}:{r.model.version}", "variants": list(r.variants),
            "size_bytes": r.model.size_bytes}
    emit(data, as_json, lambda d: console.print(
        f"deleted {d['deleted']}"
        + (f" and its variants {', '.join(d['variants'])}" if d["variants"] else ""), highlight=False))
