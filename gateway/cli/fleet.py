"""`meterwatch fleet`: the fleet view (issue 13, item 3). It subscribes to the company's broker
(gateway/fleetview/client.py), keeps the latest retained state in memory (gateway/fleetview/state.py) and
serves one page and /api/fleet (gateway/fleetview/page.py). It writes nothing to the broker, unless started
with --command-key: then it signs and publishes the acknowledge / on site / note commands that the holders of
its named tokens (METERWATCH_FLEET_TOKENS or --tokens FILE, gateway/fleetview/tokens.py) ask for on its page
or API, each in the name of the token's holder (gateway/fleetview/commands.py, issue 13 item 2). `meterwatch
fleet keygen DIR` makes the key pair.

A bad --broker, --http, --tls-ca, --command-key or --tokens, or --command-key without any token, is one line
on stderr and exit status 2 (a usage error), never a traceback and never a token; a broker that does not
answer yet is no error: the view says so on the page and keeps trying.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path

import typer
import uvicorn

from gateway.config.fleet import parse_broker
from gateway.fleet.command_format import PRIVATE_NAME, PUBLIC_NAME, KeyFileError, keygen, load_private_key
from gateway.fleetview.client import FleetClient, ViewOptions
from gateway.fleetview.commands import CommandDesk
from gateway.fleetview.page import make_app
from gateway.fleetview.state import FleetState
from gateway.fleetview.tokens import ENV as TOKENS_ENV
from gateway.fleetview.tokens import TokenError
from gateway.fleetview.tokens import load as load_tokens
from gateway.observe.logs import setup_logging
from gateway.web.auth import Tokens

log = logging.getLogger("meterwatch.fleetview")
COMPANY = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def usage_error(message: str) -> typer.Exit:
    typer.echo(f"meterwatch fleet: {message}", err=True)
    return typer.Exit(2)


def parse_http(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--http {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8090")
    return host.strip("[]") or "127.0.0.1", int(port)


fleet = typer.Typer(
    invoke_without_command=True,
    rich_markup_mode=None,
    help="The fleet view: every site, open incident, offline gateway and KPI from the broker.",
)


@fleet.command("keygen")
def fleet_keygen(
    directory: Path = typer.Argument(..., help="where to write fleet-cmd.key and fleet-cmd.pub"),
) -> None:
    """Make the key pair for commands from the fleet view: fleet-cmd.key stays with the view
    (--command-key), fleet-cmd.pub goes to every gateway (fleet.commands.public_key)."""
    try:
        private, public = keygen(directory)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise usage_error(f"keygen: {where}{exc.strerror or exc}") from None
    typer.echo(f"private key (the fleet view's --command-key; keep it secret): {private}")
    typer.echo(f"public key (each gateway's fleet.commands.public_key): {public}")


@fleet.callback()
def view(
    ctx: typer.Context,
    broker: str | None = typer.Option(
        None, "--broker", help="the company's broker: mqtt://host[:port] or mqtts://host[:port]"
    ),
    company: str | None = typer.Option(
        None, "--company", help="one company's sites only (the second topic level); default: every company"
    ),
    username: str | None = typer.Option(
        None,
        "--username",
        envvar="METERWATCH_FLEET_USERNAME",
        help="broker user name",
    ),
    password: str | None = typer.Option(
        None,
        "--password",
        envvar="METERWATCH_FLEET_PASSWORD",
        show_default=False,
        help="broker password; better from the environment",
    ),
    tls_ca: Path | None = typer.Option(None, "--tls-ca", help="CA certificates (PEM) for an mqtts:// broker"),
    http: str = typer.Option("127.0.0.1:8090", "--http", help="where the page is served, HOST:PORT"),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning or error"),
    command_key: Path | None = typer.Option(
        None,
        "--command-key",
        help=f"the Ed25519 private key ({PRIVATE_NAME}) to sign commands with: the page gets acknowledge / "
        f"on site / note buttons; gateways check them with {PUBLIC_NAME}. Needs named tokens (from "
        f"{TOKENS_ENV} or --tokens): only their holders may command, each in the token's name. Without it "
        "the view is read-only",
    ),
    tokens_file: Path | None = typer.Option(
        None,
        "--tokens",
        help=f"who may command (with --command-key): a file of one 'name: token' a line, readable by its "
        f"owner only (chmod 600), instead of {TOKENS_ENV}='name=token,name=token'. A name is what the "
        "gateway's timeline records ('by wang via fleet'); a token has at least 16 characters",
    ),
) -> None:
    """The fleet view: every site, open incident, offline gateway and KPI from the broker (read-only
    unless --command-key is given)."""
    if ctx.invoked_subcommand is not None:
        return
    if broker is None:
        raise usage_error("--broker is required: mqtt://host[:port] or mqtts://host[:port]")
    try:
        address = parse_broker(broker)
    except ValueError as exc:
        raise usage_error(f"--broker {broker!r}: {exc}") from None
    if company is not None and not COMPANY.match(company):
        raise usage_error(
            f"--company {company!r}: expected lower-case letters, digits and dashes (one topic level)"
        )
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise usage_error(f"--log-level {log_level!r}: expected debug, info, warning or error")
    if tls_ca is not None and not tls_ca.is_file():
        raise usage_error(f"--tls-ca {tls_ca}: no such file")
    key = None
    tokens: Tokens | None = None
    if command_key is not None:
        try:
            key = load_private_key(command_key)
        except KeyFileError as exc:
            raise usage_error(f"--command-key {exc.filename}: {exc.strerror}") from None
        try:
            named = load_tokens(os.environ.get(TOKENS_ENV), tokens_file)
        except TokenError as exc:
            raise usage_error(str(exc)) from None
        if not named:
            raise usage_error(
                f"--command-key needs named tokens (who may command): set {TOKENS_ENV}='name=token,...' "
                "or give --tokens FILE (one 'name: token' a line, chmod 600)"
            )
        tokens = Tokens(named)
    elif tokens_file is not None:
        raise usage_error(
            "--tokens says who may command: give --command-key too (without it the view is read-only)"
        )
    try:
        host, port = parse_http(http)
    except ValueError as exc:
        raise usage_error(str(exc)) from None
    # bound before anything starts: a busy port is one clear line, not uvicorn's sys.exit
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise usage_error(f"--http {http}: cannot listen there ({exc.strerror})") from None
    setup_logging(log_level)  # logfmt on stderr, as `meterwatch run` logs
    if command_key is None and os.environ.get(TOKENS_ENV, "").strip():
        log.warning(
            f"{TOKENS_ENV} is set but there is no --command-key: the view is read-only, tokens unused"
        )

    state = FleetState()
    options = ViewOptions(address, company, username, password, tls_ca)
    client = FleetClient(options, state)
    commands = None
    if key is not None:
        commands = CommandDesk(key, client, state.snapshot)
        client.on_event = commands.on_event
    client.start()
    app = make_app(state, client.status, commands=commands, tokens=tokens)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    mode = "read-only"
    if command_key is not None:
        mode = f"with commands by {', '.join(sorted(t.name for t in named))}"
    typer.echo(
        f"fleet view of {options.topic} at {address.host}:{address.port} ({mode}): "
        f"http://{host}:{sock.getsockname()[1]}/"
    )
    try:
        server.run(sockets=[sock])
    finally:
        client.stop()
        sock.close()
