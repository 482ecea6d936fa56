"""`make bench`: the sidecar against the upstream reached directly and nginx, in one run.

The proxy under test (sidecar with one worker, or nginx with one worker process) is pinned to
CPU 0; the fake upstream and the load generator (wrk, or the stream holder) share CPU 1. For each
scenario and target it records requests/s, latency percentiles, the proxy's CPU time per
request, its peak RSS and the errors, then prints a markdown table and writes it to a file.

    python -m tests.bench.run [--duration 10] [--streams 10000] [--hold 30] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
PROXY_CPU = "0"
LOAD_CPU = "1"
KEY = "sk-bench-master-key"
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

CHAT_BODY = {
    "model": "bench",
    "messages": [
        {"role": "system", "content": "You are a concise assistant. " * 8},
        {
            "role": "user",
            "content": "Summarise the following text in one sentence. " + "lorem ipsum " * 50,
        },
    ],
    "temperature": 0.2,
    "max_tokens": 64,
}
SCENARIOS = {
    "chat": ("(a) chat, 64 connections", "/v1/chat/completions", CHAT_BODY, 64),
    "stream": (
        "(b) streamed chat, 20 chunks, 64 conn.",
        "/v1/chat/completions",
        {**CHAT_BODY, "stream": True},
        64,
    ),
    "embeddings": (
        "(c) embeddings, 1536 dims, 64 conn.",
        "/v1/embeddings",
        {"model": "bench-embed", "input": "The quick brown fox jumps over the lazy dog."},
        64,
    ),
    "latency": ("(d) chat, 1 connection", "/v1/chat/completions", CHAT_BODY, 1),
    "paced": ("(g) chat, 64 conn., paced", "/v1/chat/completions", CHAT_BODY, 64),
    # Every request's body differs (wrk numbers them): what the response cache costs when it
    # never hits, against (a), where the cache answers every request but the first.
    "distinct": (
        "(h) chat, every body distinct, 64 conn.",
        "/v1/chat/completions",
        {**CHAT_BODY, "user": "bench-@N@"},
        64,
    ),
}
_DISTINCT_RUNS = itertools.count(1)  # wrk runs of (h) so far, each numbering its bodies apart
# Requests/s offered in (g): every target gets the same load, below what any of them saturates
# at, so their CPU per request compares like with like. Under (a)'s saturating load nginx serves
# several times the sidecar's requests per wake-up, which lowers its cost per request.
PACED_RATE = 4000
# (f) is run by tests/bench/tokens.py, not wrk: its label only.
TOKENS_LABEL = "(f) token streams, one write per event"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(cpu: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpu, *argv]


def tree(pid: int) -> list[int]:
    """pid and its children (nginx's workers)."""
    found = [pid]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def cpu_seconds(pid: int) -> float:
    total = 0
    for p in tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICKS


def status_kib(pid: int, field_name: str) -> int:
    total = 0
    for p in tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith(field_name + ":"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


def reset_peak(pid: int) -> None:
    for p in tree(pid):
        with contextlib.suppress(OSError):
            Path(f"/proc/{p}/clear_refs").write_text("5")  # resets VmHWM to the current RSS


@dataclass
class Target:
    name: str
    port: int
    proc: subprocess.Popen[bytes] | None = None
    start_s: float | None = None
    idle_rss_kib: int | None = None
    is_proxy: bool = True


@dataclass
class Result:
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    cpu_us: float | None
    peak_mib: float | None
    errors: int
    extra: dict[str, float] = field(default_factory=dict)


def wait_http(port: int, path: str, limit: float = 10.0) -> float:
    """Seconds until GET path answers 200."""
    start = time.perf_counter()
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return time.perf_counter() - start
        except OSError:
            pass
        if time.perf_counter() - start > limit:
            raise SystemExit(f"bench: nothing answered on port {port}{path}")
        time.sleep(0.005)


def start_sidecar(
    work: Path,
    upstream: int,
    workers: int = 1,
    limits: bool = False,
    redis: int | None = None,
    cache: bool = False,
    tracing: bool = False,
) -> Target:
    """The sidecar, one worker pinned to the proxy's CPU; or `workers` processes (--workers N)
    on every CPU, to show how it scales (then sharing CPU 1 with the load and the upstream).
    `limits`: the bench's key and deployments get rpm/tpm limits (never reached), counted in
    the process, or on the Redis at port `redis` (shared state). `tracing`: a span per request,
    exported to the bench upstream (which takes OTLP/HTTP too, on the load's CPU)."""
    config = work / f"sidecar-{workers}-{limits}-{redis}-{cache}-{tracing}.yaml"
    rpm = "      rpm: 1000000000\n" if limits else ""
    text = f"""
model_list:
  - model_name: bench
    litellm_params:
      model: hosted_vllm/bench-model
      api_base: http://127.0.0.1:{upstream}/v1
{rpm}  - model_name: bench-embed
    litellm_params:
      model: hosted_vllm/bench-embed
      api_base: http://127.0.0.1:{upstream}/v1
{rpm}"""
    if limits:
        text += f"""router_settings:
  enable_pre_call_checks: true
general_settings:
  master_key: sk-bench-unused-master
sidecar_settings:
  keys:
    - name: bench
      key: {KEY}
      rpm: 1000000000
      tpm: 1000000000000
"""
        if redis is not None:
            text = text.replace(
                "router_settings:\n",
                f"router_settings:\n  redis_host: 127.0.0.1\n  redis_port: {redis}\n",
            )
    else:
        text += f"general_settings:\n  master_key: {KEY}\n"
    if cache:
        text += "litellm_settings:\n  cache: true\n" + os.environ.get("XCACHE", "")
    if tracing:
        text += f"sidecar_settings:\n  otel:\n    endpoint: http://127.0.0.1:{upstream}\n"
    config.write_text(text)
    port = free_port()
    started = time.perf_counter()
    argv = [sys.executable, "-m", "sidecar", "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    cpus = PROXY_CPU if workers == 1 else f"{PROXY_CPU},{LOAD_CPU}"
    proc = subprocess.Popen(
        pinned(cpus, argv), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wait_http(port, "/health/readiness")
    name = "sidecar" if workers == 1 else f"sidecar --workers {workers}"
    if limits:
        name += " + limits on Redis" if redis is not None else " + limits"
    if cache:
        name += " + cache"
    if tracing:
        name += " + tracing"
    target = Target(name, port, proc, start_s=time.perf_counter() - started)
    time.sleep(0.5)
    target.idle_rss_kib = status_kib(proc.pid, "VmRSS")
    return target


def start_redis(work: Path) -> Target:
    """redis-server for the shared-state target, on the load's CPU, nothing persisted."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit(
            "bench: the redis target needs redis-server (apt-get install redis-server)"
        )
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(work)]
    proc = subprocess.Popen(pinned(LOAD_CPU, argv), stdout=subprocess.DEVNULL)
    time.sleep(0.3)
    return Target("redis-server", port, proc, is_proxy=False)


def start_floor(upstream: int) -> Target:
    """The floor (tests/bench/floor.py): the sidecar's own protocols and pool, no features."""
    port = free_port()
    argv = [sys.executable, "-m", "tests.bench.floor", "--port", str(port)]
    argv += ["--upstream", str(upstream)]
    proc = subprocess.Popen(pinned(PROXY_CPU, argv), cwd=ROOT)
    wait_http(port, "/health/readiness")
    target = Target("floor", port, proc)
    time.sleep(0.5)
    target.idle_rss_kib = status_kib(proc.pid, "VmRSS")
    return target


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )


def run_nginx(
    nginx: str, work: Path, name: str, cpu: str, port: int, http: str
) -> subprocess.Popen[bytes]:
    """One nginx worker pinned to `cpu`, its files named `name` in `work`, serving the `http`
    block's directives (servers, upstreams) beside the settings every nginx here shares; it
    returns once /health/readiness answers on `port`."""
    conf = work / f"{name}.conf"
    temp = work / f"{name}-temp"
    temp.mkdir(exist_ok=True)
    conf.write_text(
        f"""
worker_processes 1;
daemon off;
pid {work}/{name}.pid;
error_log {work}/{name}-error.log warn;
{"user root;" if os.geteuid() == 0 else ""}
worker_rlimit_nofile {resource.getrlimit(resource.RLIMIT_NOFILE)[1]};
events {{ worker_connections 30000; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body; proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fcgi; uwsgi_temp_path {temp}/uwsgi; scgi_temp_path {temp}/scgi;
{http}
}}
"""
    )
    proc = subprocess.Popen(
        pinned(cpu, [nginx, "-c", str(conf), "-p", str(work)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(port, "/health/readiness")
    return proc


def start_nginx(work: Path, upstream: int) -> Target | None:
    nginx = nginx_binary()
    if nginx is None:
        print("bench: nginx not installed (apt-get install nginx-light): its columns are skipped")
        return None
    port = free_port()
    http = f"""
    upstream llm {{ server 127.0.0.1:{upstream}; keepalive 512; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
        location = /health/readiness {{ return 200 "ok"; }}
    }}"""
    proc = run_nginx(nginx, work, "nginx", PROXY_CPU, port, http)
    time.sleep(0.3)
    return Target("nginx", port, proc, idle_rss_kib=status_kib(proc.pid, "VmRSS"))


CANNED_CHAT = {
    "id": "chatcmpl-canned",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "bench-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "A short canned answer. " * 4},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 180, "completion_tokens": 24, "total_tokens": 204},
}
CANNED_EMBEDDING = {
    "object": "list",
    "data": [{"object": "embedding", "index": 0, "embedding": [0.0123456] * 1536}],
    "model": "bench-embed",
    "usage": {"prompt_tokens": 10, "total_tokens": 10},
}


CANNED_SCENARIOS = ("chat", "embeddings", "latency", "paced")


def start_canned(work: Path) -> Target:
    """nginx itself as the upstream, answering canned JSON (chat and embeddings, never a
    stream): it lifts the ceiling the Python fake upstream puts on requests/s."""
    nginx = nginx_binary()
    if nginx is None:
        raise SystemExit("bench: --upstream canned needs nginx (apt-get install nginx-light)")
    port = free_port()
    # Static files answer a POST with 405; error_page turns that into the file, with 200.
    root = work / "canned"
    (root / "v1" / "chat").mkdir(parents=True, exist_ok=True)
    (root / "v1" / "chat" / "completions").write_text(json.dumps(CANNED_CHAT))
    (root / "v1" / "embeddings").write_text(json.dumps(CANNED_EMBEDDING))
    http = f"""
    keepalive_requests 1000000;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location /v1/ {{ root {root}; default_type application/json; error_page 405 =200 $uri; }}
        location = /health/readiness {{ return 200 'ok'; }}
    }}"""
    proc = run_nginx(nginx, work, "canned", LOAD_CPU, port, http)
    return Target("direct", port, proc, is_proxy=False)


def wrk(
    port: int,
    path: str,
    body: dict[str, object],
    connections: int,
    seconds: float,
    work: Path,
    rate: int = 0,
) -> dict[str, int]:
    """wrk's figures; with `rate`, each connection waits between requests so that together
    they offer about `rate` requests/s (a closed loop: the wait is not shortened by a slow
    reply, so a target that cannot keep up shows it as fewer requests/s)."""
    body_file = work / "body.json"
    body_file.write_text(json.dumps(body))
    env = {**os.environ, "BENCH_BODY_FILE": str(body_file), "BENCH_AUTH": KEY}
    if rate:
        env["BENCH_DELAY_MS"] = f"{connections * 1000 / rate:.3f}"
    if "@N@" in body_file.read_text():
        # Numbered from where no earlier run (the warm-up, another target) has been, so
        # that no body repeats one already cached: every request misses.
        env["BENCH_DISTINCT"] = str(next(_DISTINCT_RUNS) * 100_000_000)
    out = subprocess.run(
        pinned(
            LOAD_CPU,
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "-s",
                str(HERE / "report.lua"),
                f"http://127.0.0.1:{port}{path}",
            ],
        ),
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("BENCH "))
    return dict(json.loads(line[len("BENCH ") :]))


def measure(target: Target, scenario: str, seconds: float, work: Path, upstream: Target) -> Result:
    _, path, body, connections = SCENARIOS[scenario]
    rate = PACED_RATE if scenario == "paced" else 0
    wrk(target.port, path, body, connections, min(2.0, seconds), work, rate)  # warm-up
    watched = target if target.is_proxy else upstream
    assert watched.proc is not None
    reset_peak(watched.proc.pid)
    cpu_before = cpu_seconds(watched.proc.pid)
    got = wrk(target.port, path, body, connections, seconds, work, rate)
    cpu = cpu_seconds(watched.proc.pid) - cpu_before
    requests = max(got["requests"], 1)
    return Result(
        rps=requests / (got["duration_us"] / 1e6),
        p50_ms=got["p50_us"] / 1000,
        p90_ms=got["p90_us"] / 1000,
        p99_ms=got["p99_us"] / 1000,
        cpu_us=cpu / requests * 1e6 if target.is_proxy else None,
        peak_mib=status_kib(watched.proc.pid, "VmHWM") / 1024 if target.is_proxy else None,
        errors=got["errors"] + got["non2xx"],
    )


def hold_streams(target: Target, streams: int, hold: float, work: Path) -> Result:
    assert target.proc is not None or not target.is_proxy
    pid = target.proc.pid if target.proc else None
    rss_before = status_kib(pid, "VmRSS") if pid else 0
    cpu_before = cpu_seconds(pid) if pid else 0.0
    started = time.perf_counter()
    proc = subprocess.Popen(
        pinned(
            LOAD_CPU,
            [
                sys.executable,
                "-m",
                "tests.bench.holder",
                "--port",
                str(target.port),
                "--streams",
                str(streams),
                "--hold",
                str(hold),
                "--auth",
                KEY,
            ],
        ),
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None
    opened_line = proc.stdout.readline().split()
    open_s = time.perf_counter() - started
    rss_open = status_kib(pid, "VmRSS") if pid else 0
    done_line = proc.stdout.readline().split()
    proc.wait()
    opened = int(opened_line[1]) if len(opened_line) > 1 else 0
    completed = int(done_line[1]) if len(done_line) > 1 else 0
    per_stream = (rss_open - rss_before) / max(opened, 1)
    return Result(
        rps=completed / (time.perf_counter() - started),
        p50_ms=0,
        p90_ms=0,
        p99_ms=0,
        cpu_us=(cpu_seconds(pid) - cpu_before) / max(completed, 1) * 1e6 if pid else None,
        peak_mib=rss_open / 1024 if pid else None,
        errors=streams - completed,
        extra={
            "opened": opened,
            "completed": completed,
            "kib_per_stream": per_stream,
            "open_s": open_s,
        },
    )


def token_streams(
    target: Target, upstream: Target, streams: int, events: int, pace: float
) -> Result:
    """(f): token streams, one write per event: proxy CPU per event, and how late events
    arrive (p50/p99 of now minus when the upstream wrote them)."""
    watched = target if target.is_proxy else upstream
    assert watched.proc is not None
    cpu_before = cpu_seconds(watched.proc.pid)
    reset_peak(watched.proc.pid)
    started = time.perf_counter()
    argv = [sys.executable, "-m", "tests.bench.tokens", "--port", str(target.port)]
    argv += ["--streams", str(streams), "--events", str(events), "--pace", str(pace), "--auth", KEY]
    out = subprocess.run(
        pinned(LOAD_CPU, argv), capture_output=True, text=True, cwd=ROOT, check=True
    )
    elapsed = time.perf_counter() - started
    line = next(x for x in out.stdout.splitlines() if x.startswith("TOKENS "))
    count, p50, p99, failed = line.split()[1:]
    relayed = max(int(count), 1)
    cpu = cpu_seconds(watched.proc.pid) - cpu_before
    return Result(
        rps=relayed / elapsed,
        p50_ms=float(p50),
        p90_ms=0.0,
        p99_ms=float(p99),
        cpu_us=cpu / relayed * 1e6 if target.is_proxy else None,
        peak_mib=status_kib(watched.proc.pid, "VmHWM") / 1024 if target.is_proxy else None,
        errors=int(failed) + streams * events - int(count),
        extra={"events": float(count)},
    )


def table(results: dict[str, dict[str, Result]], targets: list[Target]) -> str:
    names = [t.name for t in targets]
    lines = [
        "| scenario | target | requests/s | p50 ms | p90 ms | p99 ms | proxy CPU µs/req | proxy peak RSS MiB | errors | ratio to nginx |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for scenario, by_target in results.items():
        label = SCENARIOS[scenario][0] if scenario in SCENARIOS else scenario
        if scenario == "paced":
            label += f" ({PACED_RATE:,} requests/s offered)"
        if scenario == "tokens":
            label = TOKENS_LABEL
        nginx = by_target.get("nginx")
        for name in names:
            r = by_target.get(name)
            if r is None:
                continue
            ratio = f"{r.rps / nginx.rps:.2f}×" if nginx and nginx.rps and name != "nginx" else ""
            if ratio and r.cpu_us and nginx is not None and nginx.cpu_us:
                ratio = f"CPU {r.cpu_us / nginx.cpu_us:.2f}×, requests/s {ratio}"
            if scenario == "latency" and name != "direct" and "direct" in by_target:
                added = r.p50_ms - by_target["direct"].p50_ms
                added_nginx = nginx.p50_ms - by_target["direct"].p50_ms if nginx else None
                ratio = f"+{added:.3f} ms p50" + (
                    f" ({added / added_nginx:.2f}× nginx's)"
                    if added_nginx and name != "nginx"
                    else ""
                )
            if scenario == "tokens":
                direct = by_target.get("direct")
                added = (
                    f"+{r.p50_ms - direct.p50_ms:.2f} ms p50, +{r.p99_ms - direct.p99_ms:.2f} ms p99"
                    if direct is not None and name != "direct"
                    else ""
                )
                lines.append(
                    f"| {label} | {name} | {r.rps:,.0f} events/s | {r.p50_ms:.2f} | | {r.p99_ms:.2f} | "
                    f"{_num(r.cpu_us) + ' per event' if r.cpu_us is not None else ''} | "
                    f"{_num(r.peak_mib)} | {r.errors} | {added} |"
                )
                continue
            if scenario == "streams":
                x = r.extra
                lines.append(
                    f"| (e) {int(x['opened'])} open streams held | {name} | {x['completed']:.0f} completed | "
                    f"opened in {x['open_s']:.1f} s | | | {_num(r.cpu_us)} | {_num(r.peak_mib)} | {r.errors} | "
                    f"{x['kib_per_stream']:.1f} KiB/stream |"
                )
                continue
            lines.append(
                f"| {label} | {name} | {r.rps:,.0f} | {r.p50_ms:.2f} | {r.p90_ms:.2f} | {r.p99_ms:.2f} | "
                f"{_num(r.cpu_us)} | {_num(r.peak_mib)} | {r.errors} | {ratio} |"
            )
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{os.cpu_count()} × {cpu}, Linux {platform.release()}, Python {platform.python_version()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # A proxy holds two descriptors per open stream (client and upstream), so the per-process
    # descriptor limit caps how many streams any proxy here can hold.
    default_streams = min(10_000, (hard - 200) // 2)
    parser.add_argument("--streams", type=int, default=default_streams, help="open streams for (e)")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds each stream is held open")
    parser.add_argument(
        "--only", default="chat,stream,embeddings,latency,paced,distinct,tokens,streams"
    )
    parser.add_argument("--token-streams", type=int, default=256, help="concurrent streams for (f)")
    parser.add_argument("--token-events", type=int, default=100, help="events per stream in (f)")
    parser.add_argument("--token-pace", type=float, default=0.02, help="seconds between events")
    parser.add_argument(
        "--targets",
        default="direct,nginx,sidecar,workers,floor,limits,redis,cache,tracing",
        help="workers: the sidecar with --workers 2, for (a) chat only; floor: the sidecar's "
        "own protocols and pool with no feature (tests/bench/floor.py); limits: rpm/tpm limits "
        "on the key and the deployments, counted in the process; redis: the same limits shared "
        "on a redis-server (limits and redis: chat, stream and paced only); cache: the response "
        "cache on (type local): hits on chat and stream, misses on distinct; tracing: a span per "
        "request exported over OTLP/HTTP (chat, stream and paced only)",
    )
    parser.add_argument(
        "--upstream",
        choices=("python", "canned"),
        default="python",
        help="canned: nginx answers canned JSON as the upstream (non-streamed scenarios only)",
    )
    parser.add_argument(
        "--separate-writes", action="store_true", help="upstream writes each SSE event on its own"
    )
    parser.add_argument("--out", default=str(HERE / "results.md"))
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print(
            "bench: wrk is not installed; install it with: sudo apt-get install wrk",
            file=sys.stderr,
        )
        return 2
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        print("bench: needs taskset (util-linux) and 2 CPUs", file=sys.stderr)
        return 2
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    wanted = args.targets.split(",")
    if args.upstream == "canned" and not set(args.only.split(",")) <= set(CANNED_SCENARIOS):
        print(
            f"bench: --upstream canned serves {', '.join(CANNED_SCENARIOS)} only", file=sys.stderr
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="sidecar-bench-") as tmp:
        work = Path(tmp)
        if args.upstream == "canned":
            upstream = start_canned(work)
            up_port = upstream.port
        else:
            up_port = free_port()
            up_argv = [sys.executable, "-m", "tests.bench.upstream", "--port", str(up_port)]
            if args.separate_writes:
                up_argv.append("--separate-writes")
            up_proc = subprocess.Popen(pinned(LOAD_CPU, up_argv), cwd=ROOT)
            upstream = Target("direct", up_port, up_proc, is_proxy=False)
        targets: list[Target] = []
        try:
            time.sleep(0.5)
            if "direct" in wanted:
                targets.append(upstream)
            if "nginx" in wanted and (nginx := start_nginx(work, up_port)) is not None:
                targets.append(nginx)
            if "sidecar" in wanted:
                targets.append(start_sidecar(work, up_port))
            if "workers" in wanted:
                targets.append(start_sidecar(work, up_port, workers=2))
            if "floor" in wanted:
                targets.append(start_floor(up_port))
            if "cache" in wanted:
                targets.append(start_sidecar(work, up_port, cache=True))
            if "tracing" in wanted:
                targets.append(start_sidecar(work, up_port, tracing=True))
            if "limits" in wanted:
                targets.append(start_sidecar(work, up_port, limits=True))
            if "redis" in wanted:
                redis = start_redis(work)
                targets.append(redis)
                targets.append(start_sidecar(work, up_port, limits=True, redis=redis.port))
            results: dict[str, dict[str, Result]] = {}
            for scenario in args.only.split(","):
                results[scenario] = {}
                for target in targets:
                    if target.name.startswith("sidecar --workers") and scenario != "chat":
                        continue  # scaling is shown on (a); the rest compares one core each
                    if target.name == "redis-server":
                        continue  # started for the shared-state target, not measured itself
                    if ("limits" in target.name or "tracing" in target.name) and scenario not in (
                        "chat",
                        "paced",
                        "stream",
                    ):
                        continue  # what limits cost shows on chat
                    if "cache" in target.name and scenario not in ("chat", "stream", "distinct"):
                        continue  # hits on (a) and (b), misses on (h)
                    if scenario == "distinct" and target.name not in ("sidecar", "sidecar + cache"):
                        continue
                    if scenario == "tokens":
                        results[scenario][target.name] = token_streams(
                            target, upstream, args.token_streams, args.token_events, args.token_pace
                        )
                    elif scenario == "streams":
                        if target.is_proxy and target.name != "floor":
                            results[scenario][target.name] = hold_streams(
                                target, args.streams, args.hold, work
                            )
                    else:
                        results[scenario][target.name] = measure(
                            target, scenario, args.duration, work, upstream
                        )
                    print(f"bench: {scenario} via {target.name}: done", file=sys.stderr)
        finally:
            for t in [*targets, upstream]:
                if t.proc is not None and t.proc.poll() is None:
                    t.proc.terminate()
                    try:
                        t.proc.wait(10)
                    except subprocess.TimeoutExpired:
                        t.proc.kill()
    sidecar = next((t for t in targets if t.name == "sidecar"), None)
    nginx_t = next((t for t in targets if t.name == "nginx"), None)
    report = [
        f"Machine: {machine()}. Proxy pinned to CPU {PROXY_CPU}; upstream and load (wrk {args.duration:.0f} s, 1 thread) on CPU {LOAD_CPU}.",
        f"Command: `make bench` (python -m tests.bench.run --duration {args.duration:g} --streams {args.streams} --hold {args.hold:g}"
        + (" --separate-writes" if args.separate_writes else "")
        + ").",
        "",
        table(results, targets),
        "",
    ]
    if sidecar is not None:
        report.append(
            f"sidecar: start to serving {sidecar.start_s:.3f} s (exec to first 200 on /health/readiness), "
            f"idle RSS {(sidecar.idle_rss_kib or 0) / 1024:.1f} MiB."
        )
    if nginx_t is not None:
        report.append(
            f"nginx: idle RSS {(nginx_t.idle_rss_kib or 0) / 1024:.1f} MiB (master and worker)."
        )
    text = "\n".join(report) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"bench: written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
