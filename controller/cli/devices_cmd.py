"""`slmops devices`: the fleet."""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape

from agent.delivery.phases import DeploymentPhase
from controller.cli import bench_view, views
from controller.cli.client import AdminClient
from controller.cli.output import CliError, ago, console, emit, json_option, labels_text, table
from controller.cli.token_cmd import duration_ms, parse_labels
from protos import admin_pb2

SHOW_BENCHMARKS = 5
DEFAULT_BENCH_TIMEOUT = "5m"
# An assignment puts the variant's files into the blob store (hashing each once), which for a
# large variant takes longer than a plain call's deadline.
ASSIGN_DEADLINE_S = 600.0
PHASE_STYLE = {DeploymentPhase.ACTIVE: "green", DeploymentPhase.FAILED: "red",
               DeploymentPhase.REFUSED: "red", DeploymentPhase.ROLLED_BACK: "yellow",
               DeploymentPhase.UNKNOWN: "yellow"}


@click.group()
def devices() -> None:
    """Enrolled devices: list, show, label, benchmark, set their profile, assign a model, roll
    back, remove."""


def _view(d: admin_pb2.Device) -> dict[str, Any]:
    """views.device plus where the profile comes from and the device's deployment."""
    return {**views.device(d), "matched_profile": d.matched_profile,
            "profile_override": d.profile_override, "deployment": views.deployment(d.deployment)}


def _profile_text(d: dict) -> str:
    if d.get("profile_override"):
        return f"{d['profile']} (override; matched {d.get('matched_profile') or '-'})"
    return d["profile"]


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _release(model: str, release: int) -> str:
    return f"{model or '?'} r{release}" if release else "-"


def _model_cell(dep: dict[str, Any]) -> str:
    """The list's compact deployment: `support:3 r7`, `support:3 r7 -> r9 downloading 37 %`,
    `support:3 r7 -> r9 failed`, `support:2 r5 (rolled back)`."""
    active = _release(dep["active_model"], dep["active_release"])
    if not views.awaiting(dep) and dep["phase"] in ("", DeploymentPhase.ACTIVE):
        return active
    phase = views.phase_text(dep, short=True)
    if dep["desired_release"] and dep["desired_release"] != dep["active_release"]:
        return f"{active} -> r{dep['desired_release']} {phase}"
    return f"{active} ({phase})"


def _rows(devs: list[dict]) -> list[list[str]]:
    now = int(time.time() * 1000)
    return [[d["id"], d["name"], d["status"], labels_text(d["labels"]), _profile_text(d),
             _model_cell(d["deployment"]),
             f"{d['hardware']['arch']} {d['hardware']['logical_cores']}c "
             f"{_gib(d['hardware']['memory_total_bytes'])}", ago(d["last_seen_ms"], now)]
            for d in devs]


@devices.command("list")
@click.option("--selector", "-l", multiple=True, help="KEY=VALUE the labels must match")
@click.option("--all", "include_removed", is_flag=True, help="include removed devices")
@json_option
@click.pass_obj
def list_(obj: dict, selector: tuple[str, ...], include_removed: bool, as_json: bool) -> None:
    """List devices with their status, labels, profile, model and hardware."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.ListDevices, admin_pb2.ListDevicesRequest(
        selector=parse_labels(selector, "--selector"), include_removed=include_removed))
    data = {"devices": [_view(d) for d in response.devices]}
    emit(data, as_json, lambda d: table(f"devices ({len(d['devices'])})",
         ["id", "name", "status", "labels", "profile", "model", "hardware", "last seen"],
         _rows(d["devices"])))


def _show_deployment(d: dict) -> None:
    dep = d["deployment"]
    if not (dep["desired_release"] or dep["active_release"] or dep["phase"]):
        console.print(f"  {'model':>12}  none assigned (`slmops devices assign {d['name']} "
                      "NAME:VERSION`)", highlight=False)
        return
    desired = _release(dep["desired_model"], dep["desired_release"])
    if dep["desired_release"] and dep["desired_variant"]:
        desired += f" ({dep['desired_variant']} variant)"
    phase = escape(dep["phase_text"]) or "no report yet"
    style = PHASE_STYLE.get(dep["phase"])
    if style and not views.awaiting(dep):
        phase = f"[{style}]{phase}[/{style}]"
    if dep["updated_at_ms"]:
        phase += f"  (reported {ago(dep['updated_at_ms'], int(time.time() * 1000))})"
    for key, value in (("desired", escape(desired)),
                       ("active", escape(_release(dep["active_model"], dep["active_release"]))),
                       ("previous", escape(_release(dep["previous_model"], dep["previous_release"]))),
                       ("phase", phase)):
        console.print(f"  {key:>12}  {value}", highlight=False)


def _show(d: dict) -> None:
    h = d["hardware"]
    console.print(f"[bold]{d['name']}[/bold] {d['id']}  {d['status']}  profile "
                  f"{_profile_text(d)}", highlight=False)
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
    _show_deployment(d)
    if d.get("benchmarks"):
        table(f"benchmarks (latest {len(d['benchmarks'])})", bench_view.COLUMNS,
              [bench_view.row(b) for b in d["benchmarks"]])
    else:
        console.print(f"  {'benchmarks':>12}  none yet (`slmops devices bench {d['name']}`)",
                      highlight=False)


@devices.command("show")
@click.argument("device")
@json_option
@click.pass_obj
def show(obj: dict, device: str, as_json: bool) -> None:
    """One device in detail (by id or name): its model (desired, active, previous release) and
    the phase of any update, and its latest benchmarks."""
    client = AdminClient(obj["config"])
    d = client.call(client.stub.GetDevice, admin_pb2.GetDeviceRequest(id=device)).device
    found = client.call(client.stub.ListBenchmarks, admin_pb2.ListBenchmarksRequest(
        device_id=d.id, limit=SHOW_BENCHMARKS)).benchmarks
    emit({**_view(d), "benchmarks": [bench_view.benchmark(b) for b in found]}, as_json, _show)


def _bench_human(v: dict) -> None:
    if "report" not in v:
        click.echo(f"benchmark {v['command_id']} sent; its report is stored when it arrives "
                   f"(`slmops devices show {v['device']}`)")
        return
    table(f"benchmark on {v['device_name']}", bench_view.COLUMNS, [bench_view.row(v)])
    variant = v["report"].get("variant", {})
    console.print(f"variant {variant.get('name', '?')} sha256 {v['variant_sha256']}",
                  highlight=False)


@devices.command("bench")
@click.argument("device")
@click.option("--prompts", type=click.IntRange(1, 1000), default=None,
              help="prompts to time (default: the agent's)")
@click.option("--max-tokens", type=click.IntRange(1, 8192), default=None,
              help="tokens per answer (default: the agent's)")
@click.option("--timeout", default=DEFAULT_BENCH_TIMEOUT, show_default=True,
              help="how long to wait for the report, e.g. 90s, 10m")
@click.option("--detach", is_flag=True, help="send the command and return at once")
@json_option
@click.pass_obj
def bench(obj: dict, device: str, prompts: int | None, max_tokens: int | None, timeout: str,
          detach: bool, as_json: bool) -> None:
    """Benchmark the device's active model on the device; the report is stored with the
    device and the model."""
    timeout_ms = duration_ms(timeout, "--timeout")
    client = AdminClient(obj["config"])
    request = admin_pb2.DeviceBenchRequest(id=device, timeout_ms=timeout_ms, prompts=prompts or 0,
                                           max_tokens=max_tokens or 0, detach=detach)
    if as_json or detach:
        response = client.call(client.stub.DeviceBench, request, timeout=timeout_ms / 1000 + 15)
    else:
        with console.status(f"benchmarking on {device} (up to {timeout})..."):
            response = client.call(client.stub.DeviceBench, request, timeout=timeout_ms / 1000 + 15)
    if response.HasField("benchmark"):
        view = bench_view.benchmark(response.benchmark)
    else:
        view = {"command_id": response.command_id, "device": device}
    emit(view, as_json, _bench_human)


@devices.command("set-profile")
@click.argument("device")
@click.argument("profile", required=False, default="")
@click.option("--clear", is_flag=True, help="drop the override: use the matched profile again")
@json_option
@click.pass_obj
def set_profile(obj: dict, device: str, profile: str, clear: bool, as_json: bool) -> None:
    """Override the profile matched from the device's hardware (its builds follow it)."""
    if bool(profile) == clear:
        raise CliError("give a PROFILE (see `slmops profiles list`) or --clear, not both",
                       "invalid_argument", 2)
    client = AdminClient(obj["config"])
    d = client.call(client.stub.SetDeviceProfile, admin_pb2.SetDeviceProfileRequest(
        id=device, profile=profile)).device
    emit(_view(d), as_json, lambda v: click.echo(f"{v['name']} ({v['id']}): profile "
                                                 f"{_profile_text(v)}"))


def _release_view(d: admin_pb2.Device, release: int, model: str) -> dict[str, Any]:
    """What assign and rollback print: the release, its model, and the device."""
    return {"release": release, "model": model, "device": _view(d)}


def _follow_hint(v: dict) -> str:
    return f"the agent converges; follow with `slmops devices show {v['device']['name']}`"


def _assigned(v: dict) -> None:
    d, dep = v["device"], v["device"]["deployment"]
    variant = f" ({dep['desired_variant']} variant)" if dep["desired_variant"] else ""
    click.echo(f"{d['name']} ({d['id']}): assigned {v['model']}{variant} as release "
               f"{v['release']}; {_follow_hint(v)}")


@devices.command("assign")
@click.argument("device")
@click.argument("model", metavar="NAME[:VERSION]")
@json_option
@click.pass_obj
def assign(obj: dict, device: str, model: str, as_json: bool) -> None:
    """Make a model the device's desired state: its variant for the device's profile, signed as
    a new release. NAME alone means its newest version. The agent downloads what it lacks, checks
    it, and switches once the variant passes its gate on the device."""
    client = AdminClient(obj["config"])
    request = admin_pb2.AssignModelRequest(id=device, model=model)
    if as_json:
        response = client.call(client.stub.AssignModel, request, timeout=ASSIGN_DEADLINE_S)
    else:
        with console.status(f"signing {model} for {device}..."):
            response = client.call(client.stub.AssignModel, request, timeout=ASSIGN_DEADLINE_S)
    # The controller resolves NAME to NAME:VERSION; say which one it chose.
    chosen = response.device.deployment.desired_model or model
    emit(_release_view(response.device, response.release, chosen), as_json, _assigned)


def _rolled_back(v: dict) -> None:
    d = v["device"]
    target = f"{v['model']} as release {v['release']}" if v["model"] else f"release {v['release']}"
    click.echo(f"{d['name']} ({d['id']}): rolling back to {target}; {_follow_hint(v)}")


@devices.command("rollback")
@click.argument("device")
@json_option
@click.pass_obj
def rollback(obj: dict, device: str, as_json: bool) -> None:
    """Back to the model the device ran before its current one: a signed rollback instruction,
    a new release naming that model; its files are still on the device, so nothing is
    downloaded."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.RollbackDevice, admin_pb2.RollbackDeviceRequest(id=device))
    dep, release = response.device.deployment, response.release
    # The rollback instruction is the device's desired release now.
    model = dep.desired_model if dep.desired_release == release else ""
    emit(_release_view(response.device, release, model), as_json, _rolled_back)


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
    emit(_view(d), as_json,
         lambda v: click.echo(f"{v['name']} ({v['id']}): {labels_text(v['labels'])}"))


@devices.command("remove")
@click.argument("device")
@json_option
@click.pass_obj
def remove(obj: dict, device: str, as_json: bool) -> None:
    """Decommission a device: its certificate stops working at once."""
    client = AdminClient(obj["config"])
    d = client.call(client.stub.RemoveDevice, admin_pb2.RemoveDeviceRequest(id=device)).device
    emit(_view(d), as_json, lambda v: click.echo(f"removed {v['name']} ({v['id']})"))
