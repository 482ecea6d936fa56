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
    p.add_argument("--workers", type=int, help="worker processes sharing the port (default 1)")
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
        print(describe(config))
        return 0
    host = args.host if args.host is not None else config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers if args.workers is not None else config.server.workers
    if workers < 1:
        print("sidecar: --workers must be at least 1", file=sys.stderr)
        return 2
    if not 0 <= port <= 65535:
        print("sidecar: --port must be 0..65535", file=sys.stderr)
        return 2
    from sidecar import server  # imported late: --check and --version stay quick

    if workers == 1:
        try:
            server.run(config, host, port)
        except OSError as exc:
            print(
                f"sidecar: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr
            )
            return 1
        return 0
    from sidecar.workers import supervise

    return supervise(
        workers, config, lambda table: server.run(table, host, port, reuse_port=True, worker=True)
    )
