"""--workers N: N processes share the port (SO_REUSEPORT); the kernel spreads connections.

The supervisor forks the workers after the table is validated, forwards SIGTERM, SIGINT and
SIGHUP to them, and replaces a worker that dies while it is not shutting down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

log = logging.getLogger("sidecar")

RESPAWN_PAUSE = 0.5  # seconds between replacing workers, so a crash loop does not spin a core
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def supervise(count: int, worker: Callable[[], None]) -> int:
    """Run `worker` in `count` child processes until a shutdown signal; return the exit code."""
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            code = 0
            try:
                worker()
            except BaseException:
                log.exception("worker failed")
                code = 1
            finally:
                os._exit(code)
        children.add(pid)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        if sig != signal.SIGHUP:
            stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    for _ in range(count):
        spawn()
    worst = 0
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        children.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            worst = max(worst, code if code > 0 else 0)
            continue
        log.error("worker %d exited with %d; starting another", pid, code)
        time.sleep(RESPAWN_PAUSE)
        if not stopping:
            spawn()
    return worst
