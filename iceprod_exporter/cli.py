"""Command line: ``run``, ``once``, ``check-config``, ``login``, ``demo`` and ``docs``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import secrets
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import yaml
from prometheus_client import disable_created_metrics
from pydantic import SecretStr

from iceprod_exporter import __version__, config, logs, reference
from iceprod_exporter.config import ConfigError, Settings
from iceprod_exporter.source.auth import OpenIDProvider, TokenError, write_private

EXIT_CONFIG = 2
#: the spellings other exporters use, so their deployment habits carry over
FLAG_ALIASES = {"web_config_file": ("--web.config.file",)}


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors never echo a value: it may be a secret."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_CONFIG, f"{self.prog}: error: {without_values(message)}\n")


def without_values(message: str) -> str:
    """An argparse error message with the values it quotes left out."""
    head, sep, rest = message.partition("unrecognized arguments: ")
    if sep:
        flags = (
            word.split("=", 1)[0] if word.startswith("-") else "VALUE" for word in rest.split()
        )
        return head + sep + " ".join(flags)
    return re.sub(r"(invalid [^:]*? value|invalid choice): .*", r"\1", message)


def _settings_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="YAML settings file (also ICEPROD_EXPORTER_CONFIG_FILE)",
    )
    group = parser.add_argument_group("settings (each also an environment variable)")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        text = f"{field.description} [{config.env_name(name)}]"
        if field.annotation is bool:
            group.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, help=text)
        else:
            group.add_argument(
                flag, *FLAG_ALIASES.get(name, ()), dest=name, metavar=name.upper(), help=text
            )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also used to document the CLI)."""
    parser = _Parser(
        prog="iceprod-exporter",
        description="Prometheus exporter for IceProd datasets, jobs and tasks.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, text in (
        ("run", "poll IceProd and serve /metrics until stopped"),
        ("once", "poll once, print the exposition on stdout; exit 1 if the poll failed"),
        ("check-config", "validate settings and print them with secrets redacted"),
        ("login", "device-code login that saves a refresh token for refresh_token mode"),
        ("demo", "run the exporter against a built-in simulated IceProd"),
    ):
        sub = commands.add_parser(name, help=text, description=text)
        _settings_flags(sub)
        if name == "demo":
            sub.add_argument("--datasets", type=int, default=20, help="simulated datasets")
            sub.add_argument(
                "--tick", type=float, default=10.0, help="seconds between simulation steps"
            )
            sub.add_argument("--seed", type=int, default=0, help="simulation seed")
    docs = commands.add_parser("docs", help="write the generated metrics/config references")
    docs.add_argument("--directory", type=Path, default=Path("docs"))
    docs.add_argument("--check", action="store_true", help="fail if the files are stale")
    return parser


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    return {name: getattr(args, name, None) for name in Settings.model_fields}


def _load(args: argparse.Namespace, defaults: dict[str, Any] | None = None) -> Settings:
    return config.load(_flags(args), config_file=args.config, defaults=defaults)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``iceprod-exporter`` command."""
    args = build_parser().parse_args(argv)
    disable_created_metrics()  # type: ignore[no-untyped-call]  # _created adds only series
    if args.command == "docs":
        return _docs(args)
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"iceprod-exporter: error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return _demo(args)
    settings = _load(args)
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "check-config":
        settings.require_api()
        settings.check_web_config()
        yaml.safe_dump(settings.redacted(), sys.stdout, sort_keys=False)
        return 0
    if args.command == "login":
        return _login(settings)
    from iceprod_exporter.daemon.exporter import (
        Exporter,  # imported late: `docs` and `--help` stay light
    )

    exporter = Exporter(settings)
    if args.command == "once":
        return _once(exporter)
    return _serve(exporter)


def _serve(exporter: Any, announce: Callable[[Any], None] = lambda http: None) -> int:
    """Start the serving process, ``announce`` it, run until stopped; 1 if serving died."""
    from iceprod_exporter.serving.parent import ServerExited

    try:
        announce(exporter.start_http())
        asyncio.run(exporter.run())
    except ServerExited as exc:
        print(f"iceprod-exporter: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _once(exporter: Any) -> int:
    with _progress(exporter):
        snapshot = asyncio.run(exporter.once())
    sys.stdout.write(exporter.exposition()[0].decode())
    return 0 if snapshot.up else 1


@contextmanager
def _progress(exporter: Any) -> Iterator[None]:
    """Show how many API answers arrived, on a terminal only (stdout stays the exposition)."""
    if not sys.stderr.isatty():
        yield
        return
    answered = 0

    def tick() -> None:
        nonlocal answered
        answered += 1
        print(f"\rpolling IceProd: {answered} API answers", end="", file=sys.stderr, flush=True)

    stop = exporter.progress.listen(tick)
    try:
        yield
    finally:
        stop()
        print(file=sys.stderr)


async def _device_flow_endpoints(provider: OpenIDProvider) -> tuple[str, str]:
    return await provider.device_endpoint(), await provider.token_endpoint()


def _login(settings: Settings) -> int:
    from rest_tools.client.device_client import CommonDeviceGrant

    if settings.refresh_token_file is None:
        raise ConfigError("refresh_token_file: required for login")
    # the realm is vetted as the daemon vets it (bounded, issuer, endpoints on its origin), and
    # rest-tools' device flow is given those endpoints instead of discovering them again itself
    provider = OpenIDProvider(settings.oauth_url, settings.token_timeout)
    try:
        device_url, token_url = asyncio.run(_device_flow_endpoints(provider))
    except TokenError as exc:
        raise ConfigError(f"oauth_url: {exc}") from None
    secret = config.read_secret(
        settings.oauth_client_secret, settings.oauth_client_secret_file, "oauth_client_secret"
    )
    try:
        refresh_token = CommonDeviceGrant().perform_device_grant(
            logging.getLogger("iceprod_exporter.login"),
            device_url,
            token_url,
            settings.oauth_client_id,
            secret,
        )
    except RuntimeError as exc:  # rest-tools' message names the OAuth error, never a secret
        raise ConfigError(f"login: {exc}") from None
    write_private(settings.refresh_token_file, refresh_token)
    print(f"saved a refresh token to {settings.refresh_token_file} (mode 0600)", file=sys.stderr)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from iceprod_exporter.daemon.exporter import Exporter
    from iceprod_simulator import (
        SYSTEM_ROLE_CLAIMS,
        OIDCIssuer,
        SimulatedIceProd,
        Simulation,
        build_store,
    )

    base = _load(
        args, defaults={"poll_interval": 5, "task_stats_interval": 30, "port": config.DEFAULT_PORT}
    )
    logs.configure(base.log_level, base.log_format)
    issuer = OIDCIssuer(token_ttl=120)
    secret = secrets.token_urlsafe(24)
    issuer.register_client("iceprod-exporter-demo", secret, SYSTEM_ROLE_CLAIMS)
    store = build_store(datasets=args.datasets, seed=args.seed)
    simulator = SimulatedIceProd(
        store, issuer=issuer, simulation=Simulation(store, args.seed), tick_seconds=args.tick
    )
    with issuer, simulator:
        settings = base.model_copy(
            update={
                "api_url": simulator.url,
                "oauth_url": issuer.url,
                "oauth_client_id": "iceprod-exporter-demo",
                "oauth_client_secret": SecretStr(secret),
                "auth_mode": config.AuthMode.CLIENT_CREDENTIALS,
            }
        )
        host = (
            "localhost"
            if settings.listen_address in ("0.0.0.0", "127.0.0.1")
            else (settings.listen_address)
        )

        def announce(http: Any) -> None:
            print(
                f"IceProd exporter demo: open {http.scheme}://{host}:{http.port}/ "
                f"(simulated IceProd at {simulator.url}, {args.datasets} datasets); "
                "Ctrl-C stops.",
                file=sys.stderr,
                flush=True,
            )

        return _serve(Exporter(settings), announce)


def _docs(args: argparse.Namespace) -> int:
    stale = reference.write(args.directory, check=args.check)
    for path in stale:
        print(f"{'stale' if args.check else 'wrote'}: {path}", file=sys.stderr)
    return 1 if args.check and stale else 0
