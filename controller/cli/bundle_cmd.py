"""`slmops bundle`: a release as one file, for devices with no network path to the controller.

`bundle export` has the controller sign the model's variant for a profile as a release issued to
no device, and streams the bundle (an uncompressed tar: manifest.json, manifest.sig, then
blobs/<sha256>; agent/delivery/bundle.py) into FILE.tmp. Only a complete stream whose first
members are the signed manifest is renamed to FILE, so FILE is never half a bundle; any failure,
an interrupt included, removes the temporary file. The device installs it with
`slmops-agent install-bundle FILE`, which makes the same checks as a network delivery.

The stream's messages carry only bytes. If the controller announces the bundle's size in the
initial metadata (``x-slmops-bundle-bytes``) the progress bar has a total; otherwise it counts
bytes and speed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import click
import grpc
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TransferSpeedColumn,
)

from agent.delivery.manifest import Manifest, ManifestRefused
from agent.delivery.storage import format_bytes
from controller.cli.client import AdminClient
from controller.cli.output import CliError, emit, json_option, when
from controller.cli.token_cmd import duration_ms
from protos import admin_pb2

BUNDLE_HEAD = ("manifest.json", "manifest.sig")
SIGNATURE_BYTES = 64  # ed25519
MAX_MANIFEST_BYTES = 16 << 20  # far above any real manifest; read whole to show what was exported
SIZE_METADATA = "x-slmops-bundle-bytes"
DEFAULT_TIMEOUT = "1h"


@click.group()
def bundle() -> None:
    """Bundles: a signed release in one file, for devices with no network path."""


def _temp_of(out: Path) -> Path:
    return out.with_name(out.name + ".tmp")


def _check_out(out: Path) -> None:
    """Refuse an --out that can't become the bundle file before asking the controller for it."""
    if out.is_dir():
        raise CliError(f"--out: {out} is a directory; name the file to write, e.g. "
                       f"{out / 'model.bundle'}", "invalid_argument", 2)
    if not out.parent.is_dir():
        raise CliError(f"--out: directory {out.parent} does not exist; create it or write "
                       "elsewhere", "invalid_argument", 2)


def _announced_size(call: Any) -> int | None:
    for key, value in call.initial_metadata() or ():
        if key == SIZE_METADATA:
            try:
                return int(value)
            except ValueError:
                return None
    return None


@contextmanager
def _progress(show: bool, label: str) -> Iterator[Callable[[int, int | None], None]]:
    """advance(bytes, total) for a bar of bytes on stderr (stdout stays for --json)."""
    if not show:
        yield lambda _n, _total: None
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                  transient=True) as progress:
        task = progress.add_task(label, total=None)

        def advance(n: int, total: int | None) -> None:
            progress.update(task, advance=n, total=total)

        yield advance


def _receive(client: AdminClient, request: admin_pb2.ExportBundleRequest, f: BinaryIO,
             timeout_s: float, show: bool) -> tuple[int, str]:
    """Stream the bundle into ``f``; (bytes, sha256). A failed call becomes the CLI's error."""
    digest, size = hashlib.sha256(), 0
    call = client.stub.ExportBundle(request, timeout=timeout_s)
    try:
        with _progress(show, f"{request.model} ({request.profile})") as advance:
            total = _announced_size(call)
            for chunk in call:
                f.write(chunk.data)
                digest.update(chunk.data)
                size += len(chunk.data)
                advance(len(chunk.data), total)
    except grpc.RpcError as e:
        raise client.error(e) from None
    finally:
        call.cancel()  # a no-op after the end; stops the controller's stream on an interrupt
    return size, digest.hexdigest()


def read_head(path: Path) -> Manifest:
    """The manifest of a bundle file, if its first members are manifest.json and manifest.sig
    (the signature is the device's to check against its pinned key)."""
    what = "the controller sent a bundle that"
    try:
        with tarfile.open(path, "r:") as tar:
            first, second = tar.next(), tar.next()
            names = tuple(m.name if m else None for m in (first, second))
            if names != BUNDLE_HEAD or not (first and second and first.isfile() and second.isfile()):
                raise CliError(f"{what} does not start with {' and '.join(BUNDLE_HEAD)} (found "
                               f"{', '.join(str(n) for n in names)})", "data_loss")
            if first.size > MAX_MANIFEST_BYTES:
                raise CliError(f"{what} has a {first.size}-byte manifest.json; at most "
                               f"{MAX_MANIFEST_BYTES} are expected", "data_loss")
            if second.size != SIGNATURE_BYTES:
                raise CliError(f"{what} has a {second.size}-byte manifest.sig; an ed25519 "
                               f"signature has {SIGNATURE_BYTES}", "data_loss")
            body = tar.extractfile(first)
            assert body is not None  # a regular file, checked above
            return Manifest.from_json(json.loads(body.read()))
    except (tarfile.TarError, ValueError, ManifestRefused) as e:  # JSONDecodeError is a ValueError
        raise CliError(f"{what} can't be read: {e}", "data_loss") from None


def _exported(v: dict[str, Any]) -> None:
    click.echo(f"wrote {v['path']}: {format_bytes(v['size_bytes'])} ({v['size_bytes']} bytes), "
               f"sha256 {v['sha256']}")
    click.echo(f"  release {v['release']}: {v['model']}, {v['profile']} variant, {v['files']} "
               f"files; expires {v['expires_at']}")
    click.echo(f"  on the device, before it expires: slmops-agent install-bundle "
               f"{Path(v['path']).name} --data-dir DIR", err=True)


@bundle.command("export")
@click.argument("model", metavar="NAME:VERSION")
@click.option("--profile", required=True,
              help="the device profile the bundle is for (see `slmops profiles list`)")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="the bundle file to write (replaced if it exists)")
@click.option("--timeout", default=DEFAULT_TIMEOUT, show_default=True,
              help="how long the export may take, e.g. 10m, 2h")
@click.option("--allow-downgrade", is_flag=True,
              help="let a device that runs a newer version of the model install this one")
@json_option
@click.pass_obj
def export(obj: dict, model: str, profile: str, out: Path, timeout: str, allow_downgrade: bool,
           as_json: bool) -> None:
    """Write the variant of NAME:VERSION for --profile, signed as a release, with every file it
    needs, into one file, for a device with no network path to the controller. The device
    installs it with `slmops-agent install-bundle FILE`, with the same checks as a network
    delivery."""
    timeout_s = duration_ms(timeout, "--timeout") / 1000
    _check_out(out)
    client = AdminClient(obj["config"])
    request = admin_pb2.ExportBundleRequest(model=model, profile=profile,
                                            allow_downgrade=allow_downgrade)
    temp = _temp_of(out)
    try:
        try:
            with open(temp, "wb") as f:
                size, sha = _receive(client, request, f, timeout_s, show=not as_json)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise CliError(f"--out: can't write {temp}: {e.strerror or e}; free some space or "
                           "write elsewhere", "io_error") from None
        if size == 0:
            raise CliError(f"the controller sent an empty bundle for {model} ({profile})",
                           "data_loss")
        manifest = read_head(temp)
        os.replace(temp, out)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    finally:
        client.close()
    emit({"path": str(out), "size_bytes": size, "sha256": sha, "release": manifest.release,
          "model": manifest.ref, "profile": manifest.profile, "files": len(manifest.files),
          "variant_bytes": manifest.total_bytes, "expires_at": when(manifest.expires_at_ms),
          "expires_at_ms": manifest.expires_at_ms}, as_json, _exported)
