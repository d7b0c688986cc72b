"""import_model: a pretrained model brought in as it is — a GGUF file, a Hugging Face model
directory, or a hub id — as a Hugging Face directory the other steps load.

``source`` is ``hf:ORG/NAME`` (downloaded on the machine that runs the step: it needs a
network), a ``.gguf`` file (dequantized to fp32 safetensors, its tokenizer written from the
file's own fields; see modelkit/gguf_import.py), or a model directory. In a job on the
controller a directory arrives as its uploaded files, listed in ``files`` as ``SOURCE/REL``
(`slmops models import DIR` fills it); with ``--local`` the directory is read where it is.

The directory keeps ``slmops-source.json`` (format, the GGUF's sha256 and quantization types or
each weight file's sha256, the hub id). With ``name``, the model is registered under that name
when the run succeeds (like a ``register`` step); later steps use ``${ID.model}``.

Output: ``model`` (kind "pretrained").
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from controller.pipeline import refs
from controller.pipeline.refs import DataRef, ModelRef
from controller.pipeline.steps.base import Step, StepContext, StepError, external_path
from controller.pipeline.steps.params import ParamError, param, walk_refs

MODEL_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]{0,254}$")
GGUF_MAGIC = b"GGUF"
STEP_ID = "import"


def source_kind(source: str) -> str:
    """"hub", "gguf" or "dir": how ``source`` is read."""
    if source.startswith("hf:"):
        return "hub"
    return "gguf" if source.lower().endswith(".gguf") else "dir"


def relative_file(source: str, ref: str) -> str:
    """A directory file's path inside the model (``SOURCE/REL`` -> ``REL``), checked: plain
    names only, so an uploaded name can't leave the model's directory."""
    rel = ref[len(source) + 1:] if ref.startswith(source.rstrip("/") + "/") else ""
    if not rel or not all(_PART.match(p) and p not in (".", "..") for p in rel.split("/")):
        raise ParamError("files", f"{ref!r} is not a file of {source!r} (SOURCE/NAME, plain names)")
    return rel


@dataclass(frozen=True, kw_only=True)
class ImportModelParams:
    source: str = param(help="hf:ORG/NAME (needs a network), a .gguf file, or a Hugging Face model "
                             "directory (config.json, weights, tokenizer files)")
    name: str = param("", "register the model under this name when the run succeeds (default: "
                          "don't; use ${ID.model} in later steps)")
    files: list[DataRef] = param(factory=list, help="a directory's files as SOURCE/REL, uploaded "
                                                    "with a job (`slmops models import` fills it)")

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ParamError("source", "expected hf:ORG/NAME, a .gguf file or a model directory")
        kind = source_kind(self.source)
        if kind == "hub":
            try:
                refs.parse_model_ref(self.source)
            except refs.RefError as e:
                raise ParamError("source", str(e)) from None
        if self.files and kind != "dir":
            raise ParamError("files", f"only a directory source has files; {self.source!r} is a {kind}")
        for ref in self.files:
            relative_file(self.source, ref)
        if self.name and not MODEL_NAME.match(self.name):
            raise ParamError("name", f"{self.name!r}: a model name is 1-63 lowercase letters, digits, "
                                     "'.', '_' or '-', starting with a letter or digit")


def import_recipe_text(source: str, name: str, files: list[str] | None = None) -> str:
    """The one-step recipe of `slmops models import`."""
    recipe_name = re.sub(r"[^A-Za-z0-9._-]", "-", f"import-{name}")[:64]
    with_: dict[str, Any] = {"source": source, "name": name}
    if files:
        with_["files"] = list(files)
    return yaml.safe_dump({"name": recipe_name, "steps": [
        {"id": STEP_ID, "uses": "import_model", "with": with_}]}, sort_keys=False)


class ImportModel(Step):
    name = "import_model"
    summary = "import a pretrained model (hf:ORG/NAME, a .gguf file or a model directory)"
    Params = ImportModelParams
    outputs: ClassVar[dict[str, str]] = {"model": "model"}
    opaque_data = True  # a GGUF and weight files: not JSON lines

    @classmethod
    def references(cls, params: ImportModelParams) -> Any:
        kind = source_kind(params.source)
        if kind == "gguf":
            yield "source", DataRef, params.source
        elif kind == "dir" and not params.files:  # --local: the directory where it is
            yield "source", ModelRef, params.source
        yield from walk_refs(_FilesOnly(files=list(params.files)))

    def run(self, ctx: StepContext, params: ImportModelParams) -> dict[str, Path]:
        from controller.pipeline.modelkit import ModelError, dir_size

        out = ctx.dir / "model"
        try:
            if not (out / "slmops.json").is_file():
                source = self._import(ctx, params, out)
            else:
                ctx.events.log(f"{ctx.task()}: imported before; kept")
                source = _source_of(out)
            from controller.pipeline.modelkit.hf_import import KIND, facts

            found = facts(out)
        except ModelError as e:
            raise StepError(str(e)) from None
        lineage: dict[str, Any] = {"kind": KIND, "source": source, "model": found}
        ctx.lineage["model"] = lineage
        ctx.events.log(f"{ctx.task()}: {found['architecture'] or found['model_type']}, "
                       f"{found['params'] / 1e6:.1f} M parameters, vocabulary {found['vocab_size']}, "
                       f"chat template {'yes' if found['chat_template'] else 'no'}")
        if params.name:
            ctx.info["register"] = [{
                "name": params.name, "kind": KIND, "path": str(out.resolve()), "params": found["params"],
                "size_bytes": dir_size(out), "metrics": None,
                "lineage": {"recipe": ctx.recipe.name, "recipe_sha256": ctx.recipe.sha256,
                            "step": ctx.spec.id, "output": "model", **lineage}}]
        return {"model": out}

    def _import(self, ctx: StepContext, params: ImportModelParams, out: Path) -> dict[str, Any]:
        from controller.pipeline.modelkit import hf_import

        kind, source = source_kind(params.source), params.source
        log = ctx.events.log
        if kind == "hub":
            hub_id = source[3:].strip()
            log(f"{ctx.task()}: downloading {source} from the Hugging Face hub")
            folder = hf_import.download_hub(hub_id, ctx.dir / "download")
            info = {"format": "hf-hub", "hub_id": hub_id}
            hf_import.import_dir(hf_import.local_files(folder), out, info, source, link=True, log=log)
        elif kind == "gguf":
            self._gguf(ctx, source, out)
        elif params.files:
            files = {relative_file(source, ref): ctx.data(ref) for ref in params.files}
            hf_import.import_dir(files, out, {"format": "hf-directory", "path": Path(source).name}, source,
                                 link=True, log=log)
        else:
            folder = external_path(source, None, ctx.base_dir, "model path")
            if not folder.is_dir():
                raise StepError(f"{source}: not a directory")
            hf_import.import_dir(hf_import.local_files(folder), out,
                                 {"format": "hf-directory", "path": folder.name}, source, log=log)
        return _source_of(out)

    @staticmethod
    def _gguf(ctx: StepContext, source: str, out: Path) -> None:
        import json
        import shutil

        from controller.pipeline.modelkit import ModelError, write_meta
        from controller.pipeline.modelkit.gguf_import import (
            SOURCE_FILE,
            check_architecture,
            import_gguf,
            read_info,
        )
        from controller.pipeline.modelkit.hf_import import KIND

        path = ctx.data(source)
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise ModelError(f"{source}: not a GGUF file (it does not start with the GGUF magic "
                                 "bytes); give a .gguf file, a Hugging Face model directory or "
                                 "hf:ORG/NAME")
        staged = ctx.dir / "gguf-model"
        shutil.rmtree(staged, ignore_errors=True)
        info = read_info(path)
        check_architecture(info, source)  # before anything is loaded
        ctx.events.log(f"{ctx.task()}: dequantizing {source} ({info.architecture}, "
                       f"{', '.join(sorted(info.quantization))}) to fp32 safetensors")
        import_gguf(path, staged)
        described = {**info.to_json(), "file": Path(source).name}  # a job's copy is named by hash
        (staged / SOURCE_FILE).write_text(json.dumps(described, indent=2) + "\n", encoding="utf-8")
        write_meta(staged, {"kind": KIND, "params": _param_count(staged)})
        staged.rename(out)


@dataclass(frozen=True)
class _FilesOnly:
    files: list[DataRef] = field(default_factory=list)


def _param_count(directory: Path) -> int:
    """Parameters from the safetensors headers (no weights loaded)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                shape = f.get_slice(key).get_shape()
                n = 1
                for d in shape:
                    n *= d
                total += n
    return total


def _source_of(directory: Path) -> dict[str, Any]:
    import json

    from controller.pipeline.modelkit.gguf_import import SOURCE_FILE

    try:
        found = json.loads((directory / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}
