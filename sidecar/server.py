"""The sidecar's listeners around the Gateway: start, signals, reload, drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import socket
from dataclasses import dataclass

from sidecar import config as configs
from sidecar.accesslog import AccessLog
from sidecar.affinity import Affinity
from sidecar.cache.cache import Cache
from sidecar.cache.local import LocalStore
from sidecar.cache.redis_store import RedisStore
from sidecar.config import CacheSettings, Config
from sidecar.deployment import ConfigError
from sidecar.http.server import Listener
from sidecar.metrics import Metrics, NoMetrics
from sidecar.proxy import Gateway, refusal_answer
from sidecar.shared.ledger import Ledger
from sidecar.shared.sync import Sync
from sidecar.upstream import Pool

log = logging.getLogger("sidecar")

ADMIN_DRAIN = 1.0  # seconds the admin listener's requests may take once the API's have drained


@dataclass
class Running:
    gateway: Gateway
    listener: Listener
    port: int
    admin: Listener | None = None
    admin_port: int | None = None  # the admin listener's bound port, when there is one

    async def stop(self) -> None:
        """Stop listening, let in-flight requests finish (up to the drain timeout), close the
        pool. The admin listener goes last, so that probes see readiness 503 while draining."""
        self.gateway.draining = True
        await self.listener.close(self.gateway.state.config.server.drain_timeout)
        await self.gateway.pool.close()
        if self.admin is not None:
            await self.admin.close(ADMIN_DRAIN)
        if self.gateway.cache is not None:
            await self.gateway.cache.close()
        if self.gateway.sync is not None:
            await self.gateway.sync.stop()
        await self.gateway.attempts.affinity.close()
        if self.gateway.tracing is not None:  # the spans still queued sent, briefly
            await asyncio.to_thread(self.gateway.tracing.shutdown)
        self.gateway.access_log.flush()


async def start(
    config: Config,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    uds: socket.socket | None = None,
    admin_port: int | None = None,
) -> Running:
    """Listen and serve; `admin_port` (else sidecar_settings.admin_port) adds the admin listener."""
    pool = Pool()
    metrics = Metrics() if config.server.metrics else NoMetrics()
    ledger = Ledger(config.shared) if config.shared is not None else None
    gateway = Gateway(config, pool, metrics, AccessLog(enabled=config.server.access_log), ledger)
    if ledger is not None:
        await _share(gateway, ledger)
    if config.cache is not None:
        gateway.cache = _cache(config.cache, gateway)
    if config.otel is not None:
        from sidecar.tracing import Tracing  # imports the SDK: only when tracing is configured

        gateway.tracing = Tracing(config.otel)
        metrics.tracing = gateway.tracing

    def limits() -> tuple[int, float]:
        # Read per request, so that a reload can change them.
        server = gateway.state.config.server
        return server.max_request_bytes, server.body_timeout

    listener = Listener(
        gateway.handle,
        limits,
        max_connections=config.server.max_connections,
        over_limit=gateway.handle_over_limit,
        answer=refusal_answer,
    )
    if admin_port is None:
        admin_port = config.server.admin_port
    admin: Listener | None = None
    try:
        bound = await listener.listen(host, port, reuse_port=reuse_port)
        if uds is not None:
            await listener.listen_on(uds)
        if admin_port is not None:
            admin = Listener(gateway.handle_admin, limits)
            admin_port = await admin.listen(
                config.server.admin_host, admin_port, reuse_port=reuse_port
            )
    except BaseException:
        await listener.close(0)
        if admin is not None:
            await admin.close(0)
        await pool.close()
        if gateway.sync is not None:
            await gateway.sync.stop()
        raise
    return Running(gateway, listener, bound, admin, admin_port)


def _cache(settings: CacheSettings, gateway: Gateway) -> Cache:
    """The response cache: in this process's memory, or on Redis."""
    if settings.redis is None:
        return Cache(settings, LocalStore(settings.max_bytes))
    from sidecar.cache.redis_store import CONNECTIONS
    from sidecar.shared.link import Link

    # Its own pool, apart from the sync's: a herd of lookups must not hold the sync up.
    link = Link(settings.redis, CONNECTIONS)
    return Cache(settings, RedisStore(link, settings.namespace))


AFFINITY_CONNECTIONS = 8  # Redis connections for response ids: a lookup only on a miss here


async def _share(gateway: Gateway, ledger: Ledger) -> None:
    """Shared state on Redis: the sync started, and told to the parts that count and cool."""
    from sidecar.shared.link import Link  # imports redis: only when a Redis is configured

    sync = Sync(ledger, Link(ledger.settings), lambda: gateway.watched, gateway.router.cool)
    gateway.router.on_cooldown = sync.publish
    gateway.sync = gateway.attempts.sync = sync
    sync.budgets = gateway.budgets
    # Which deployment made each Responses API response, for every replica to know.
    gateway.attempts.affinity = Affinity(
        Link(ledger.settings, AFFINITY_CONNECTIONS), ledger.settings.namespace
    )
    gateway.metrics.shared = sync
    await sync.start()
    if not ledger.up:
        log.warning("shared state: serving without Redis for now; the sync keeps trying")


def reload(running: Running, path: str, announce: bool = True) -> bool:
    """Load the file again; an invalid one is refused and the table in service is kept.
    `announce`: say what of it needs a restart (a supervisor's workers leave that to it)."""
    try:
        new = configs.load(path)
    except ConfigError as exc:
        log.error("reload refused, keeping the current table: %s", exc)
        return False
    for warning in new.warnings:
        log.warning("%s: %s", path, warning)
    if announce:
        warn_restart_needed(running.gateway.state.config, new)
    running.gateway.reload(new)
    log.info("reloaded %s: %d deployments", path, len(new.deployments))
    return True


def warn_restart_needed(old: Config, new: Config) -> None:
    changed = configs.restart_needed(old.server, new.server)
    if old.shared != new.shared:  # the sync and its Redis connection are made at start
        changed.append("the shared state (router_settings.redis_*, sidecar_settings.shared_state)")
    if old.cache != new.cache:  # so is the cache's store
        changed.append("the response cache (litellm_settings.cache, cache_params)")
    if old.otel != new.otel:  # and the exporter
        changed.append("tracing (sidecar_settings.otel, OTEL_EXPORTER_OTLP_*)")
    if changed:
        log.warning(
            "%s: %s changed; the listeners and workers keep their settings until a restart",
            new.path,
            ", ".join(changed),
        )


async def serve(
    config: Config,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    supervisor: int | None = None,
    uds: socket.socket | None = None,
    admin_port: int | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain; SIGHUP or a change of the file reloads it. A
    worker of a `supervisor` (its pid) leaves SIGINT and watching the file to it."""
    worker = supervisor is not None
    running = await start(config, host, port, reuse_port=reuse_port, uds=uds, admin_port=admin_port)
    log.info(
        "sidecar listening on %s:%d with %d deployments",
        host,
        running.port,
        len(config.deployments),
    )
    if running.admin_port is not None:
        log.info("health and metrics also on %s:%d", config.server.admin_host, running.admin_port)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    stops = (signal.SIGTERM,) if worker else (signal.SIGTERM, signal.SIGINT)
    for sig in stops:
        loop.add_signal_handler(sig, stopping.set)
    loop.add_signal_handler(signal.SIGHUP, reload, running, config.path, not worker)
    if worker:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # blocked since the fork
    tasks = []
    if worker:
        # The supervisor watches the file and sends SIGHUP, so that it always knows the table
        # its workers serve; a worker watches for the supervisor's death instead.
        assert supervisor is not None
        tasks.append(asyncio.create_task(_orphaned(supervisor, stopping)))
    elif config.server.reload_interval:
        tasks.append(
            asyncio.create_task(_watch(running, config.path, config.server.reload_interval))
        )
    await stopping.wait()
    for task in tasks:
        task.cancel()
    log.info("draining (up to %.0fs)", config.server.drain_timeout)
    # A second signal while draining exits at once.
    for sig in stops:
        loop.add_signal_handler(sig, _exit_now)
    await running.stop()
    log.info("stopped")


def ensure_free(host: str, port: int) -> None:
    """OSError when anything holds the port. Workers bind with SO_REUSEPORT, which lets any
    process of the same user join the port and take a share of its connections, another
    sidecar with another table among them; so first a plain bind, which nothing may share,
    proves the port free. (Port 0 is a new port each time: nothing to check.)"""
    if port == 0:
        return
    for family, kind, proto, _, address in socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the real bind
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            probe.bind(address)


def bind_error(exc: OSError) -> str:
    """The system's words for a failed bind, without asyncio's wrapping around them (a name
    that does not resolve has its own words, and a negative number)."""
    if isinstance(exc, socket.gaierror) or not exc.errno or exc.errno < 0:
        return exc.strerror or str(exc)
    return os.strerror(exc.errno)


def unix_socket(path: str) -> socket.socket:
    """A listening Unix socket at `path`, replacing a stale one left by an earlier run."""
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens there: a leftover
        else:
            raise OSError(98, "address already in use")
        finally:
            probe.close()
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def remove_unix_socket(path: str, inode: int) -> None:
    """Remove the socket's file on a clean stop, if it is still the one we bound (`inode`),
    not one a newer process put there since."""
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def fingerprint(path: str) -> tuple[int, int, int] | None:
    """What changes when the file does: an edit (time, size) or a swap of the file behind it
    (inode), as Kubernetes does to a mounted ConfigMap by replacing a symlink."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


async def _watch(running: Running, path: str, interval: float) -> None:
    seen = fingerprint(path)
    while True:
        await asyncio.sleep(interval)
        now = fingerprint(path)
        if now is not None and now != seen:
            seen = now
            log.info("%s changed", path)
            reload(running, path)


ORPHAN_CHECK = 1.0  # seconds between a worker's checks that its supervisor still lives


async def _orphaned(parent: int, stopping: asyncio.Event) -> None:
    """A supervisor that was killed (SIGKILL, OOM) cannot stop its workers: each notices that
    its parent changed and drains, instead of serving on as an orphan nobody replaces."""
    while os.getppid() == parent:
        await asyncio.sleep(ORPHAN_CHECK)
    log.warning("the supervisor %d is gone; stopping", parent)
    stopping.set()


def raise_fd_limit() -> None:
    """Every open stream holds two descriptors (client and upstream): take all the kernel
    allows this process, as nginx's worker_rlimit_nofile does, instead of the shell's 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _exit_now() -> None:
    os._exit(1)


def run(
    config: Config,
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    supervisor: int | None = None,
    uds: socket.socket | None = None,
    admin_port: int | None = None,
) -> None:
    """The blocking entry point of one worker process, on uvloop when it is installed."""
    raise_fd_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        runner_factory = None
    else:
        runner_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=runner_factory) as runner:
        runner.run(
            serve(
                config,
                host,
                port,
                reuse_port=reuse_port,
                supervisor=supervisor,
                uds=uds,
                admin_port=admin_port,
            )
        )
