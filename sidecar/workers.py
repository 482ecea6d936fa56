"""--workers N: N processes share the port (SO_REUSEPORT); the kernel spreads connections.

The supervisor forks the workers after the table is validated. SIGTERM and SIGINT become a
SIGTERM to every worker (each drains, then exits). The file is watched here, not in the workers:
a change (or SIGHUP) is loaded here first and, when valid, forwarded as SIGHUP, so that a worker
started later serves the same table as the ones reloaded. A worker
that dies is replaced, unless it dies right after its start, which means it cannot serve at all.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

from sidecar import config as configs
from sidecar import server
from sidecar.config import Config
from sidecar.deployment import ConfigError

log = logging.getLogger("sidecar")

RESPAWN_PAUSE = 0.5  # seconds between replacing workers, so a crash loop does not spin a core
WAIT_TICK = 0.2  # seconds between the supervisor's checks for exited workers and file changes
START_GRACE = 5.0  # seconds: a worker that exits with an error sooner cannot start (a signal
# that kills it is another matter: it is replaced)


def supervise(count: int, config: Config, run: Callable[[Config, int], None]) -> int:
    """Run `run(config, supervisor's pid)` in `count` child processes until a shutdown signal;
    the exit code."""
    children: dict[int, float] = {}  # pid -> when it started
    stopping = False
    current = config
    code = 0
    me = os.getpid()
    seen = server.fingerprint(config.path)  # the file as last loaded here

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            # The supervisor turns a terminal's SIGINT into one SIGTERM per worker; a worker
            # that also took the SIGINT sent to the whole process group would see two.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            # Until its loop handles SIGHUP, a new worker must neither die of one (its default
            # action) nor miss it: blocked, a SIGHUP waits, and serve() unblocks it once its
            # handler is in place, so a change made while it starts is loaded then.
            signal.signal(signal.SIGHUP, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
            status = 0
            try:
                # The file as it is now: it may have changed since the last SIGHUP.
                try:
                    table = configs.load(current.path)
                except ConfigError:
                    table = current
                run(table, me)
            except OSError as exc:
                log.error("worker %d cannot serve: %s", os.getpid(), exc.strerror or exc)
                status = 1
            except BaseException:
                log.exception("worker %d failed", os.getpid())
                status = 1
            finally:
                os._exit(status)
        children[pid] = time.monotonic()

    def forward(sig: int) -> None:
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def reload() -> None:
        """The file, loaded here first: a valid one becomes the table that workers started
        from now on serve, and every worker is told to load it too."""
        nonlocal current, seen
        seen = server.fingerprint(current.path)
        try:
            new = configs.load(current.path)
        except ConfigError as exc:
            log.error("reload refused, keeping the current table: %s", exc)
            return
        except Exception:  # the supervisor must outlive any bad file
            log.exception("reload refused, keeping the current table")
            return
        server.warn_restart_needed(current, new)
        current = new
        forward(signal.SIGHUP)

    def on_signal(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig == signal.SIGHUP:
            reload()
            return
        stopping = True
        forward(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    for _ in range(count):
        spawn()
    next_check = time.monotonic()
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:  # no worker exited: watch the file every reload_interval meanwhile
            time.sleep(WAIT_TICK)
            interval = current.server.reload_interval
            if not interval or stopping or time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + interval
            now = server.fingerprint(config.path)
            if now is not None and now != seen:
                log.info("%s changed", config.path)
                reload()
            continue
        started = children.pop(pid, None)
        if started is None:
            continue
        exit_code = os.waitstatus_to_exitcode(status)
        if stopping:
            code = max(code, exit_code if exit_code > 0 else 0)
            continue
        if exit_code > 0 and time.monotonic() - started < START_GRACE:
            log.error("worker %d failed at start (exit %d); stopping", pid, exit_code)
            stopping = True
            code = 1
            forward(signal.SIGTERM)
            continue
        log.error("worker %d exited with %d; starting another", pid, exit_code)
        time.sleep(RESPAWN_PAUSE)
        if not stopping:
            spawn()
    return code
