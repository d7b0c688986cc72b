"""`slmops rollout`: roll a model out to the devices a selector picks, in health-gated waves;
follow it live; pause, resume, abort or roll it back."""

from __future__ import annotations

import json
import time
from typing import Any

import click
from google.protobuf import json_format
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from controller.cli.client import AdminClient
from controller.cli.output import CliError, console, emit, json_option, table, when
from controller.cli.token_cmd import duration_ms, parse_labels
from controller.cli.views import phase_word
from controller.rollouts import states
from controller.rollouts.states import ACTIVE_STATES, RolloutState
from protos import rollout_pb2

CREATE_DEADLINE_S = 600.0  # planning may hash a large variant's files
# by value: a device's, a wave's and a rollout's states share these words
STYLE = {"active": "green", "succeeded": "green", "passed": "green", "failed": "red", "halted": "red",
         "rolled_back": "yellow", "paused": "yellow", "aborted": "yellow", "skipped": "dim"}
FINAL = tuple(s for s in RolloutState if s not in ACTIVE_STATES)


@click.group()
def rollout() -> None:
    """Roll a model out in gated waves: create, status, list, pause, resume, abort, rollback."""


def _word(from_proto: Any, number: int) -> str:
    """A state's value; "unknown (N)" for one this CLI does not know (a newer controller)."""
    try:
        return str(from_proto(number).value)
    except ValueError:
        return f"unknown ({number})"


def view(r: rollout_pb2.Rollout) -> dict[str, Any]:
    """Every field under its name; the states by their words under the names the JSON output
    has always used: state (rollout and wave), status and phase (device)."""
    data = json_format.MessageToDict(r, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)
    data.pop("rollout_state")
    data["state"] = _word(states.rollout_state_from_proto, r.rollout_state)
    for w, wave in zip(data.get("waves", []), r.waves, strict=True):
        w.pop("wave_state")
        w["state"] = _word(states.wave_state_from_proto, wave.wave_state)
    for d, device in zip(data.get("devices", []), r.devices, strict=True):
        d["figures"] = json.loads(d.pop("figures_json") or "{}")
        del d["state"], d["deployment_phase"]
        d["status"] = _word(states.device_state_from_proto, device.state)
        d["phase"] = phase_word(device.deployment_phase, False)
    return data


def _styled(text: str) -> str:
    style = STYLE.get(text)
    return f"[{style}]{escape(text)}[/{style}]" if style else escape(text)


def _figures(f: dict[str, Any]) -> str:
    parts = []
    for key, fmt in (("accuracy", "acc {:.2f}"), ("p95_ms", "p95 {:.0f} ms"),
                     ("error_rate", "err {:.1%}"), ("memory_bytes", "mem {:.0f} MB")):
        value = f.get(key)
        if value is not None:
            parts.append(fmt.format(value / 2**20 if key == "memory_bytes" else value))
    return ", ".join(parts) or "-"


def render(r: dict[str, Any]) -> Table:
    outer = Table.grid(padding=(0, 1))
    gates = ", ".join(f"{k} {v:g}" for k, v in r["gates"].items()) or "none"
    outer.add_row(Text.from_markup(
        f"[bold]{r['id']}[/bold] {escape(r['model'])}  {_styled(r['state'])}  by "
        f"{escape(r['created_by'])} at {when(int(r['created_at_ms']))}"))
    outer.add_row(Text(f"selector {r['selector']}  waves {r['waves_spec']}  bake "
                       f"{int(r['bake_ms']) / 1000:g} s  max failure {r['max_failure']}  gates {gates}  "
                       f"auto-rollback {'on' if r['auto_rollback'] else 'off'}"))
    if r["reason"]:
        outer.add_row(Text.from_markup(f"[red]{escape(r['reason'])}[/red]"))
    waves = Table(title="waves", title_justify="left")
    for column in ("wave", "devices", "state", "active", "failed", "unsettled"):
        waves.add_column(column)
    for w in r["waves"]:
        label = "canary" if w["index"] == 0 else str(w["index"] + 1)
        waves.add_row(label, str(w["size"]), Text.from_markup(_styled(w["state"])), str(w["active"]),
                      str(w["failed"]), str(w["pending"]))
    outer.add_row(waves)
    devices = Table(title="devices", title_justify="left")
    for column in ("wave", "device", "status", "phase", "release", "figures", "reason"):
        devices.add_column(column)
    for d in r["devices"]:
        devices.add_row("-" if d["wave"] < 0 else str(d["wave"] + 1), escape(d["device_name"]),
                        Text.from_markup(_styled(d["status"])), d["phase"] or "-",
                        f"r{d['release']}" if int(d["release"]) else "-", _figures(d["figures"]),
                        escape(d["reason"][:120]))
    outer.add_row(devices)
    failed = [g for g in r["gate_results"] if not g["passed"]]
    if failed:
        gt = Table(title="failed gates", title_justify="left")
        for column in ("gate", "device", "value", "limit", "detail"):
            gt.add_column(column)
        for g in failed:
            gt.add_row(g["gate"], escape(g["device_name"]), str(g.get("value", "-")),
                       str(g.get("limit", "-")), escape(g["detail"][:120]))
        outer.add_row(gt)
    events = Table(title="events", title_justify="left")
    for column in ("time", "actor", "action", "detail"):
        events.add_column(column)
    for e in r["events"][-8:]:
        events.add_row(when(int(e["at_ms"])), escape(e["actor"]), e["action"], escape(e["detail"][:140]))
    outer.add_row(events)
    return outer


def _gates(**limits: float | None) -> rollout_pb2.RolloutGates:
    return rollout_pb2.RolloutGates(**{k: v for k, v in limits.items() if v is not None})


@rollout.command("create")
@click.argument("model")
@click.option("--selector", "-l", multiple=True, required=True, help="KEY=VALUE the labels must match")
@click.option("--waves", default="1,25%,100%", show_default=True,
              help="device counts or cumulative percentages; the first wave is the canary")
@click.option("--bake", default="2m", show_default=True, help="how long a wave runs before its gates")
@click.option("--max-failure", default="0", show_default=True, help="devices (N) or share (P%) that may fail")
@click.option("--min-device-accuracy", type=float, default=None, help="on-device golden accuracy, 0..1")
@click.option("--max-p95-ms", type=float, default=None, help="serving p95 latency over the bake")
@click.option("--max-error-rate", type=float, default=None, help="serving errors / requests, 0..1")
@click.option("--max-memory-bytes", type=float, default=None, help="memory the on-device gate measured")
@click.option("--no-auto-rollback", is_flag=True, help="on a failed gate, halt only")
@click.option("--offline-timeout", default="5m", show_default=True,
              help="how long an offline device may hold its wave")
@click.option("--offline-policy", type=click.Choice(["failed", "skipped"]), default="failed",
              show_default=True, help="how a device still offline after the timeout counts")
@json_option
@click.pass_obj
def create(obj: dict, model: str, selector: tuple[str, ...], waves: str, bake: str, max_failure: str,
           min_device_accuracy: float | None, max_p95_ms: float | None, max_error_rate: float | None,
           max_memory_bytes: float | None, no_auto_rollback: bool, offline_timeout: str,
           offline_policy: str, as_json: bool) -> None:
    """Roll MODEL (NAME:VERSION) out to the devices the selector picks."""
    client = AdminClient(obj["config"])
    request = rollout_pb2.CreateRolloutRequest(
        model=model, selector=parse_labels(selector, "--selector"), waves=waves,
        bake_ms=duration_ms(bake, "--bake"), max_failure=max_failure,
        gates=_gates(min_device_accuracy=min_device_accuracy, max_p95_ms=max_p95_ms,
                     max_error_rate=max_error_rate, max_memory_bytes=max_memory_bytes),
        no_auto_rollback=no_auto_rollback,
        offline_timeout_ms=duration_ms(offline_timeout, "--offline-timeout"),
        offline_policy=offline_policy)
    r = view(client.call(client.stub.CreateRollout, request, timeout=CREATE_DEADLINE_S).rollout)

    def human(r: dict) -> None:
        console.print(render(r))
        console.print(f"follow it with `slmops rollout status {r['id']} --watch`", highlight=False)

    emit(r, as_json, human)


def _get(client: AdminClient, rollout_id: str) -> dict[str, Any]:
    return view(client.call(client.stub.GetRollout, rollout_pb2.GetRolloutRequest(id=rollout_id)).rollout)


@rollout.command("status")
@click.argument("rollout_id")
@click.option("--watch", is_flag=True, help="follow it live until it ends (Ctrl-C stops watching); "
              "exits non-zero unless it ends succeeded")
@click.option("--interval", type=float, default=1.0, show_default=True, help="seconds between updates")
@json_option
@click.pass_obj
def status(obj: dict, rollout_id: str, watch: bool, interval: float, as_json: bool) -> None:
    """Each wave, each device's status and phase, the gates and their figures, the events."""
    client = AdminClient(obj["config"])
    r = _get(client, rollout_id)
    if watch and not as_json:
        try:
            with Live(render(r), console=console, refresh_per_second=4) as live:
                while r["state"] not in FINAL:
                    time.sleep(max(0.1, interval))
                    r = _get(client, rollout_id)
                    live.update(render(r))
        except KeyboardInterrupt:
            return
        _check_succeeded(r)
        return
    if watch:  # --json --watch: one JSON object per line as the state changes
        last = ""
        while True:
            line = json.dumps(r)
            if line != last:
                click.echo(line)
                last = line
            if r["state"] in FINAL:
                _check_succeeded(r)
                return
            time.sleep(max(0.1, interval))
            r = _get(client, rollout_id)
    emit(r, as_json, lambda r: console.print(render(r)))


def _check_succeeded(r: dict[str, Any]) -> None:
    """--watch ends like the rollout: exit 0 only if it succeeded, so CI can wait on it."""
    if r["state"] != RolloutState.SUCCEEDED:
        why = f": {r['reason']}" if r.get("reason") else ""
        raise CliError(f"rollout {r['id']} ended {r['state']}{why}; see `slmops rollout status "
                       f"{r['id']}`", f"rollout_{r['state']}")


@rollout.command("list")
@click.option("--state", "only", multiple=True, type=click.Choice(list(RolloutState)),
              help="only rollouts in this state (repeatable)")
@json_option
@click.pass_obj
def list_(obj: dict, only: tuple[str, ...], as_json: bool) -> None:
    """Rollouts, newest first."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.ListRollouts, rollout_pb2.ListRolloutsRequest(
        rollout_states=[states.rollout_state_to_proto(s) for s in only]))
    data = {"rollouts": [view(r) for r in response.rollouts]}
    emit(data, as_json, lambda d: table(f"rollouts ({len(d['rollouts'])})",
         ["id", "model", "state", "wave", "selector", "by", "created", "reason"],
         [[r["id"], r["model"], r["state"], f"{r['current_wave'] + 1}/{len(r['waves'])}",
           r["selector"], r["created_by"], when(int(r["created_at_ms"])), r["reason"][:60]]
          for r in d["rollouts"]]))


def _action(name: str, rpc: str, help_text: str) -> None:
    @rollout.command(name, help=help_text)
    @click.argument("rollout_id")
    @json_option
    @click.pass_obj
    def command(obj: dict, rollout_id: str, as_json: bool) -> None:
        client = AdminClient(obj["config"])
        method = getattr(client.stub, rpc)
        r = view(client.call(method, rollout_pb2.RolloutActionRequest(id=rollout_id), timeout=120).rollout)
        emit(r, as_json, lambda r: console.print(
            f"{r['id']}: {r['state']}; follow with `slmops rollout status {r['id']} --watch`",
            highlight=False))


_action("pause", "PauseRollout", "Pause: in-flight device updates finish; nothing new starts.")
_action("resume", "ResumeRollout", "Resume a paused rollout.")
_action("abort", "AbortRollout", "Stop for good; devices keep what they run.")
_action("rollback", "RollbackRollout", "Every device the rollout changed back to its previous model.")
