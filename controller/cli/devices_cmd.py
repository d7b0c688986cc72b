"""`slmops devices`: the fleet."""

from __future__ import annotations

import time

import click

from controller.cli import views
from controller.cli.client import AdminClient
from controller.cli.output import CliError, ago, console, emit, json_option, labels_text, table
from controller.cli.token_cmd import parse_labels
from protos import admin_pb2


@click.group()
def devices() -> None:
    """Enrolled devices: list, show, label, remove."""


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _rows(devs: list[dict]) -> list[list[str]]:
    now = int(time.time() * 1000)
    return [[d["id"], d["name"], d["status"], labels_text(d["labels"]), d["profile"],
             f"{d['hardware']['arch']} {d['hardware']['logical_cores']}c "
             f"{_gib(d['hardware']['memory_total_bytes'])}", ago(d["last_seen_ms"], now)]
            for d in devs]


@devices.command("list")
@click.option("--selector", "-l", multiple=True, help="KEY=VALUE the labels must match")
@click.option("--all", "include_removed", is_flag=True, help="include removed devices")
@json_option
@click.pass_obj
def list_(obj: dict, selector: tuple[str, ...], include_removed: bool, as_json: bool) -> None:
    """List devices with their status, labels, profile and hardware."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.ListDevices, admin_pb2.ListDevicesRequest(
        selector=parse_labels(selector, "--selector"), include_removed=include_removed))
    data = {"devices": [views.device(d) for d in response.devices]}
    emit(data, as_json, lambda d: table(f"devices ({len(d['devices'])})",
         ["id", "name", "status", "labels", "profile", "hardware", "last seen"],
         _rows(d["devices"])))


def _show(d: dict) -> None:
    h = d["hardware"]
    console.print(f"[bold]{d['name']}[/bold] {d['id']}  {d['status']}  profile {d['profile']}")
    for key, value in [
        ("labels", labels_text(d["labels"])), ("last seen", d["last_seen"] or "never"),
        ("enrolled", d["enrolled_at"]), ("agent", d["agent_version"]),
        ("cpu", f"{h['cpu_model']} ({h['arch']}, {h['physical_cores']} cores / "
                f"{h['logical_cores']} threads)"),
        ("isa", " ".join(h["isa_flags"]) or "-"), ("memory", _gib(h["memory_total_bytes"])),
        ("disk", f"{_gib(h['disk_free_bytes'])} free of {_gib(h['disk_total_bytes'])}"),
        ("accelerators", ", ".join(a.get("name", "?") for a in h["accelerators"]) or "none"),
        ("os", h["os"]), ("telemetry", f"through seq {d['acked_through_seq']}, "
                                       f"{d['spool_dropped_total']} dropped on the device"),
    ]:
        console.print(f"  {key:>12}  {value}", highlight=False)


@devices.command("show")
@click.argument("device")
@json_option
@click.pass_obj
def show(obj: dict, device: str, as_json: bool) -> None:
    """One device in detail (by id or name)."""
    client = AdminClient(obj["config"])
    d = client.call(client.stub.GetDevice, admin_pb2.GetDeviceRequest(id=device)).device
    emit(views.device(d), as_json, _show)


@devices.command("label")
@click.argument("device")
@click.argument("changes", nargs=-1, required=True)
@json_option
@click.pass_obj
def label(obj: dict, device: str, changes: tuple[str, ...], as_json: bool) -> None:
    """Set labels (KEY=VALUE) or remove them (KEY-)."""
    set_items = tuple(c for c in changes if "=" in c)
    remove = [c[:-1] for c in changes if "=" not in c and c.endswith("-")]
    odd = [c for c in changes if "=" not in c and not c.endswith("-")]
    if odd:
        raise CliError(f"{odd[0]!r}: use KEY=VALUE to set a label or KEY- to remove it",
                       "invalid_argument", 2)
    client = AdminClient(obj["config"])
    d = client.call(client.stub.UpdateDeviceLabels, admin_pb2.UpdateDeviceLabelsRequest(
        id=device, set=parse_labels(set_items, "labels"), remove=remove)).device
    emit(views.device(d), as_json,
         lambda v: click.echo(f"{v['name']} ({v['id']}): {labels_text(v['labels'])}"))


@devices.command("remove")
@click.argument("device")
@json_option
@click.pass_obj
def remove(obj: dict, device: str, as_json: bool) -> None:
    """Decommission a device: its certificate stops working at once."""
    client = AdminClient(obj["config"])
    d = client.call(client.stub.RemoveDevice, admin_pb2.RemoveDeviceRequest(id=device)).device
    emit(views.device(d), as_json, lambda v: click.echo(f"removed {v['name']} ({v['id']})"))
