"""`slmops token`: enrollment tokens."""

from __future__ import annotations

import click

from controller.cli import views
from controller.cli.client import AdminClient
from controller.cli.output import CliError, emit, json_option, labels_text, table
from controller.telemetry.aggregate import parse_duration
from protos import admin_pb2


def parse_labels(values: tuple[str, ...], flag: str) -> dict[str, str]:
    labels = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"{flag}: {item!r} is not KEY=VALUE", "invalid_argument", 2)
        labels[key] = value
    return labels


def duration_ms(text: str, flag: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise CliError(f"{flag}: {e}", "invalid_argument", 2) from None


@click.group()
def token() -> None:
    """Enrollment tokens: create, list, revoke."""


@token.command("create")
@click.option("--label", "labels", multiple=True, help="KEY=VALUE given to enrolled devices")
@click.option("--ttl", default="1h", show_default=True, help="how long it stays valid")
@click.option("--uses", type=int, default=1, show_default=True, help="how many devices may use it")
@json_option
@click.pass_obj
def create(obj: dict, labels: tuple[str, ...], ttl: str, uses: int, as_json: bool) -> None:
    """Create a token; its secret is shown once."""
    client = AdminClient(obj["config"])
    response = client.call(client.stub.CreateToken, admin_pb2.CreateTokenRequest(
        labels=parse_labels(labels, "--label"), ttl_ms=duration_ms(ttl, "--ttl"), max_uses=uses,
    ))
    data = {"token": response.secret_token, **views.token(response.token),
            "controller": client.config.controller, "enroll_address": client.config.enroll_address}

    def human(d: dict) -> None:
        click.echo(d["token"])
        click.echo(f"expires {d['expires_at']}, {d['max_uses']} use(s), labels "
                   f"{labels_text(d['labels'])}. Start an agent with:\n  slmops-agent run "
                   f"--controller {d['controller']} --token {d['token']} --data-dir DIR --name NAME",
                   err=True)

    emit(data, as_json, human)


@token.command("list")
@json_option
@click.pass_obj
def list_(obj: dict, as_json: bool) -> None:
    """List tokens (never their secrets)."""
    client = AdminClient(obj["config"])
    tokens = [views.token(t) for t in client.call(client.stub.ListTokens,
                                                   admin_pb2.ListTokensRequest()).tokens]
    emit({"tokens": tokens}, as_json, lambda d: table("tokens", ["id", "expires", "uses", "revoked",
         "labels"], [[t["id"], t["expires_at"], f"{t['uses']}/{t['max_uses']}", t["revoked"],
                      labels_text(t["labels"])] for t in d["tokens"]]))


@token.command("revoke")
@click.argument("token_id")
@json_option
@click.pass_obj
def revoke(obj: dict, token_id: str, as_json: bool) -> None:
    """Revoke a token; devices already enrolled keep working."""
    client = AdminClient(obj["config"])
    t = views.token(client.call(client.stub.RevokeToken,
                                admin_pb2.RevokeTokenRequest(id=token_id)).token)
    emit(t, as_json, lambda d: click.echo(f"revoked {d['id']}"))
