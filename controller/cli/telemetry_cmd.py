"""`slmops telemetry`: query the fleet's time series."""

from __future__ import annotations

import click

from controller.cli import views
from controller.cli.client import AdminClient
from controller.cli.output import CliError, emit, json_option, table
from controller.cli.token_cmd import duration_ms, parse_labels
from controller.telemetry.aggregate import AGGREGATIONS
from protos import admin_pb2


@click.group()
def telemetry() -> None:
    """Device telemetry: query, metrics."""


def _fmt(value: float) -> str:
    if abs(value) >= 1e9:
        return f"{value / 2**30:.2f}Gi"
    if abs(value) >= 1e6:
        return f"{value / 2**20:.1f}Mi"
    return f"{value:.2f}"


@telemetry.command("query")
@click.option("--metric", required=True, help="see `slmops telemetry metrics`")
@click.option("--device", default="", help="device id or name")
@click.option("--selector", "-l", multiple=True, help="KEY=VALUE over device labels")
@click.option("--since", default="10m", show_default=True, help="window length, e.g. 30s, 10m, 2h")
@click.option("--step", default="", help="bucket size, e.g. 30s (default: one bucket)")
@click.option("--agg", type=click.Choice(AGGREGATIONS), default="avg", show_default=True)
@json_option
@click.pass_obj
def query(obj: dict, metric: str, device: str, selector: tuple[str, ...], since: str,
          step: str, agg: str, as_json: bool) -> None:
    """Aggregate a metric over a time window, per device and series."""
    if device and selector:
        raise CliError("give --device or --selector, not both", "invalid_argument", 2)
    request = admin_pb2.QueryTelemetryRequest(
        metric=metric, device_id=device, selector=parse_labels(selector, "--selector"),
        since_ms=duration_ms(since, "--since"), step_ms=duration_ms(step, "--step") if step else 0,
        agg=agg,
    )
    client = AdminClient(obj["config"])
    data = views.telemetry(client.call(client.stub.QueryTelemetry, request))

    def human(d: dict) -> None:
        rows = [[s["device_name"] or s["device_id"], s["series"] or "-", p["time"], _fmt(p["value"]),
                 p["count"]] for s in d["series"] for p in s["points"]]
        table(f"{metric} ({d['agg']}) {d['start']} .. {d['end']}",
              ["device", "series", "time", "value", "samples"], rows)

    emit(data, as_json, human)


@telemetry.command("metrics")
@json_option
@click.pass_obj
def metrics(obj: dict, as_json: bool) -> None:
    """The metrics agents report."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.ListMetrics, admin_pb2.ListMetricsRequest())
    data = {"metrics": [{"name": m.name, "unit": m.unit, "help": m.help} for m in response.metrics]}
    emit(data, as_json, lambda d: table("metrics", ["name", "unit", "help"],
                                        [[m["name"], m["unit"], m["help"]] for m in d["metrics"]]))
