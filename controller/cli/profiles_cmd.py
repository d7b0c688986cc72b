"""`slmops profiles`: the device profiles — what hardware each matches, how a model is built for
it, and the gates its variant must pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from controller.cli import views
from controller.cli.output import CliError, emit, json_option, table
from controller.cli.pipeline_client import PipelineClient
from protos import pipeline_pb2


@click.group()
def profiles() -> None:
    """Device profiles: built-in and custom."""


def _matches(m: dict[str, Any]) -> str:
    parts = []
    if m["arch"]:
        parts.append("/".join(m["arch"]))
    parts += m["isa_flags"]
    if m["accelerator"]:
        memory = m["min_accelerator_memory_mb"]
        parts.append(m["accelerator"] + (f" >= {memory / 1024:g} GiB" if memory else ""))
    if m["min_memory_mb"]:
        parts.append(f"RAM >= {m['min_memory_mb'] / 1024:g} GiB")
    return " ".join(parts) or "any device"


def _build(b: dict[str, Any]) -> str:
    text = f"{b['precision']} {b['provider']}"
    if b["precision"] == "int4":
        text += f" block {b['block_size']}" + (f" acc {b['accuracy_level']}" if b["accuracy_level"] else "")
    if b["precision"] == "int8" and b["int8_scheme"]:
        text += f" {b['int8_scheme']}"
    return text


def _table(d: dict[str, Any]) -> None:
    table(f"device profiles ({len(d['profiles'])}), in matching order",
          ["profile", "source", "matches", "build", "max drop", "min tok/s", "max memory"],
          [[p["name"], p["source"], _matches(p["match"]), _build(p["build"]),
            f"{p['gates']['max_accuracy_drop']:g} pts", f"{p['gates']['min_tokens_per_s']:g}",
            f"{p['gates']['max_memory_mb'] / 1024:g} GiB"] for p in d["profiles"]])


@profiles.command("list")
@click.option("--file", "file", type=click.Path(path_type=Path), default=None,
              help="a profiles YAML: check it here and list it with the built-in profiles, "
                   "without asking the controller")
@json_option
@click.pass_obj
def list_(obj: dict, file: Path | None, as_json: bool) -> None:
    """The device profiles, in the order devices are matched to them (custom first): what each
    matches, how it is built, its gates. Without --file, the controller's."""
    if file is not None:
        from controller.build.profiles import ProfileError, load_profiles

        try:
            found = [p.to_dict() for p in load_profiles(file)]
        except ProfileError as e:
            raise CliError(str(e), "invalid_argument", 2) from None
    else:
        client = PipelineClient(obj["config"])
        response = client.call(client.pipeline.ListProfiles, pipeline_pb2.ListProfilesRequest())
        found = [views.profile(p) for p in response.profiles]
    emit({"profiles": found}, as_json, _table)
