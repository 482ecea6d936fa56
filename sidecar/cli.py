"""argv and environment -> Config -> serve(). No logic of its own."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from sidecar import __version__
from sidecar import config as configs
from sidecar.deployment import ConfigError
from sidecar.describe import describe


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sidecar", description="An OpenAI-compatible LLM gateway.")
    p.add_argument(
        "--config",
        default=os.environ.get("SIDECAR_CONFIG"),
        help="routing table, .yaml/.yml or .toml (default: $SIDECAR_CONFIG)",
    )
    p.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="port to listen on (default 4000)")
    p.add_argument(
        "--workers", help="worker processes sharing the port, or auto: one per core (default 1)"
    )
    p.add_argument(
        "--admin-port",
        type=int,
        help="also serve health and metrics (only) on this port, on sidecar_settings.admin_host",
    )
    p.add_argument(
        "--uds", help="also listen on this Unix socket path (for clients in the same pod)"
    )
    p.add_argument(
        "--check", action="store_true", help="validate the file, print the routing table and exit"
    )
    p.add_argument("--version", action="version", version=f"sidecar {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not args.config:
        print(
            "sidecar: no routing table: pass --config FILE or set SIDECAR_CONFIG", file=sys.stderr
        )
        return 2
    try:
        config = configs.load(args.config)
    except ConfigError as exc:
        print(f"sidecar: {exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        print(f"sidecar: warning: {config.path}: {warning}", file=sys.stderr)
    if args.check:
        try:
            print(describe(config), flush=True)
        except BrokenPipeError:
            # `sidecar --check | head` closed the pipe: what it wanted was read. Python's own
            # recipe: point stdout at /dev/null so that the exit's flush does not fail too.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    host = args.host if args.host is not None else config.server.host
    port = args.port if args.port is not None else config.server.port
    try:
        workers = _workers(args.workers) if args.workers is not None else config.server.workers
    except ValueError:
        print("sidecar: --workers must be a number of at least 1, or auto", file=sys.stderr)
        return 2
    for flag, value in (("--port", port), ("--admin-port", args.admin_port)):
        if value is not None and not 0 <= value <= 65535:
            print(f"sidecar: {flag} must be 0..65535", file=sys.stderr)
            return 2
    from sidecar import server  # imported late: --check and --version stay quick

    admin_port = args.admin_port if args.admin_port is not None else config.server.admin_port
    if admin_port == port and port != 0:
        print("sidecar: the admin port must differ from the API's port", file=sys.stderr)
        return 2
    listeners = [(host, port)]
    if admin_port is not None:
        listeners.append((config.server.admin_host, admin_port))
    for address in listeners:
        try:
            server.ensure_free(*address)
        except OSError as exc:
            print(
                f"sidecar: cannot listen on {address[0]}:{address[1]}: {server.bind_error(exc)}",
                file=sys.stderr,
            )
            return 1
    uds_path = args.uds or config.server.uds
    try:
        # Made before any worker starts, so that all of them accept on the one socket.
        uds = server.unix_socket(uds_path) if uds_path else None
        uds_inode = os.stat(uds_path).st_ino if uds_path else 0
    except OSError as exc:
        print(f"sidecar: cannot listen on {uds_path}: {server.bind_error(exc)}", file=sys.stderr)
        return 1
    try:
        if workers == 1:
            try:
                server.run(config, host, port, uds=uds, admin_port=admin_port)
            except OSError as exc:
                print(f"sidecar: cannot listen: {server.bind_error(exc)}", file=sys.stderr)
                return 1
            return 0
        from sidecar.workers import supervise

        return supervise(
            workers,
            config,
            lambda table, supervisor: server.run(
                table,
                host,
                port,
                reuse_port=True,
                supervisor=supervisor,
                uds=uds,
                admin_port=admin_port,
            ),
        )
    finally:
        if uds_path:
            server.remove_unix_socket(uds_path, uds_inode)


def _workers(text: str) -> int:
    count = configs.workers_auto() if text == "auto" else int(text)
    if count < 1:
        raise ValueError(text)
    return count
