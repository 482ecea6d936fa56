"""The real command line, run as a user runs it: a subprocess."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from sidecar import __version__
from tests.bench.run import tree
from tests.fakes import free_port

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = [ROOT / "deploy" / "config.example.yaml", ROOT / "deploy" / "config.example.toml"]
START_LIMIT = 10.0  # seconds a sidecar may take to answer its first probe


def sidecar(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_version() -> None:
    done = sidecar("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"sidecar {__version__}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.suffix)
def test_check_prints_the_example_table(path: Path) -> None:
    done = sidecar("--config", str(path), "--check")
    assert done.returncode == 0, done.stderr
    assert "demo -> openai/demo" in done.stdout


def test_check_reports_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "model_list:\n  - model_name: a\n    litellm_params: {model: hosted_vllm/a, api_base: http://x/v1}\n"
        "  - model_name: b\n    litellm_params: {model: opnai/gpt-4o}\n"
    )
    done = sidecar("--config", str(path), "--check")
    assert done.returncode != 0
    assert done.stderr.strip() == (
        f"sidecar: {path}: model_list[1].litellm_params.model: unknown provider 'opnai' "
        "(known: openai, text-completion-openai, hosted_vllm, llamafile, azure, azure_text)"
    )


def test_check_into_a_closed_pipe_ends_quietly(tmp_path: Path) -> None:
    """`sidecar --check | head -2`: head leaves early; no BrokenPipeError traceback."""
    entry = "  - model_name: m{0}\n    litellm_params: {{model: openai/m{0}, mock_response: hi}}\n"
    path = tmp_path / "big.yaml"
    path.write_text("model_list:\n" + "".join(entry.format(i) for i in range(3000)))
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(path), "--check"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline().endswith(b"OK, 3000 deployments\n")
    proc.stdout.close()  # more than a pipe's buffer is still to come
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(30) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_check_warns_of_an_api_base_without_v1(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        "model_list:\n  - model_name: a\n    litellm_params: {model: hosted_vllm/a, api_base: 'http://vllm:8000'}\n"
        "  - model_name: b\n    litellm_params: {model: hosted_vllm/b, api_base: 'http://vllm:8000/v1/'}\n"
        "  - model_name: c\n    litellm_params: {model: text-completion-openai/c, api_base: 'http://x/v1', api_key: ''}\n"
    )
    done = sidecar("--config", str(path), "--check")
    assert done.returncode == 0
    (warning,) = [line for line in done.stderr.splitlines() if "api_base" in line]
    assert "model_list[0].litellm_params.api_base: its path '/' does not end in /v1" in warning


def test_check_never_prints_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(
        "model_list:\n  - model_name: a\n    litellm_params:\n      model: openai/a\n"
        "      api_base: http://x/v1\n      api_key: os.environ/UP_KEY\n"
        "general_settings:\n  master_key: sk-master-secret\n"
    )
    done = sidecar("--check", env={"SIDECAR_CONFIG": str(path), "UP_KEY": "sk-up-secret"})
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    for secret in ("sk-up-secret", "sk-master-secret"):
        assert secret not in out
    assert "sha256:" in out
    path.write_text(path.read_text().replace("http://x/v1", "http://user:pw-secret@x/v1"))
    done = sidecar("--check", env={"SIDECAR_CONFIG": str(path), "UP_KEY": "sk-up-secret"})
    assert done.returncode == 1
    assert "must not carry credentials" in done.stderr and "pw-secret" not in done.stderr


def test_no_config_is_a_clear_error() -> None:
    env = {k: v for k, v in os.environ.items() if k != "SIDECAR_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar"], capture_output=True, text=True, env=env, timeout=30
    )
    assert done.returncode == 2
    assert "--config" in done.stderr


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    extra = getattr(request, "param", ())
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidecar",
            "--config",
            str(EXAMPLES[0]),
            "--port",
            str(port),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    yield proc, port
    if proc.poll() is None:
        proc.kill()
    proc.wait()
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()


async def wait_ready(port: int) -> None:
    deadline = time.monotonic() + START_LIMIT
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health/readiness") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            assert time.monotonic() < deadline, "the sidecar did not start"
            await asyncio.sleep(0.05)


async def ask_demo(port: int) -> dict[str, object]:
    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as r:
        assert r.status == 200
        result: dict[str, object] = await r.json()
        return result


MOCK_ENTRY = "  - model_name: {0}\n    litellm_params: {{model: openai/{0}, mock_response: hi}}\n"


def write_table(path: Path, *models: str) -> None:
    """A routing table of mock_response models, each answering under its own name."""
    path.write_text("model_list:\n" + "".join(MOCK_ENTRY.format(m) for m in models))


async def test_serves_the_example_and_stops_on_sigterm(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = served
    await wait_ready(port)
    reply = await ask_demo(port)
    assert reply["object"] == "chat.completion"
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0


@pytest.mark.parametrize("served", [("--workers", "2")], indirect=True)
async def test_workers_share_the_port(served: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = served
    await wait_ready(port)
    for _ in range(10):
        await ask_demo(port)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0


async def models(port: int) -> list[str]:
    url = f"http://127.0.0.1:{port}/v1/models"
    async with aiohttp.ClientSession() as session, session.get(url) as r:
        return [m["id"] for m in (await r.json())["data"]]


async def eventually(check: object, want: object) -> None:
    deadline = time.monotonic() + START_LIMIT
    while (got := await check()) != want:  # type: ignore[operator]
        assert time.monotonic() < deadline, got
        await asyncio.sleep(0.05)


async def test_sighup_reloads_and_refuses_an_invalid_file(tmp_path: Path) -> None:
    path = tmp_path / "table.yaml"
    write_table(path, "one")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(path), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await wait_ready(port)
        write_table(path, "one", "two")
        proc.send_signal(signal.SIGHUP)
        await eventually(lambda: models(port), ["one", "two"])
        path.write_text(
            "model_list:\n  - model_name: three\n    litellm_params: {model: opnai/x}\n"
        )
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        assert await models(port) == ["one", "two"]  # the old table keeps serving
        await ask_demo_like(port, "two")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert proc.stderr is not None
        log = proc.stderr.read().decode()
        proc.stderr.close()
    assert "reload refused" in log and "unknown provider 'opnai'" in log


async def ask_demo_like(port: int, model: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as r:
        assert r.status == 200


@pytest.mark.parametrize("served", [("--workers", "2")], indirect=True)
async def test_a_killed_worker_is_replaced(served: tuple[subprocess.Popen[bytes], int]) -> None:
    proc, port = served
    await wait_ready(port)
    children = worker_pids(proc.pid)
    assert len(children) == 2
    os.kill(children[0], signal.SIGKILL)

    async def count() -> int:
        now = worker_pids(proc.pid)
        return len(now) if children[0] not in now else -1

    await eventually(count, 2)
    for _ in range(10):
        await ask_demo(port)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.wait, 10) == 0


def worker_pids(parent: int) -> list[int]:
    return sorted(tree(parent)[1:])  # tree() lists the parent first


def spawn(config: Path, port: int, *extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sidecar", "--config", str(config), "--port", str(port), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 10) -> tuple[int, str]:
    try:
        proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    log = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.returncode, log


async def test_malformed_http_gets_json_and_leaves_no_key_in_the_log(
    served: tuple[subprocess.Popen[bytes], int],
) -> None:
    proc, port = served
    await wait_ready(port)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer sk-master-SECRET-9999\x01\r\nContent-Length: 2\r\n\r\n{}"
    )
    reply = await asyncio.wait_for(reader.read(), START_LIMIT)
    writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"application/json" in head
    assert b'"code":"malformed_request"' in body
    assert b"SECRET" not in reply
    await ask_demo(port)  # and it keeps serving
    proc.send_signal(signal.SIGTERM)
    code, log = await asyncio.to_thread(finish, proc)
    assert code == 0
    assert "SECRET" not in log
    assert "rejected a malformed request" in log


def test_port_in_use_is_a_clear_error() -> None:
    with socket_bound() as port:
        for extra in ((), ("--workers", "2")):
            proc = spawn(EXAMPLES[0], port, *extra)
            code, log = finish(proc, 15)
            assert code == 1, log
            assert f"sidecar: cannot listen on 127.0.0.1:{port}: Address already in use" in log
            assert "Traceback" not in log


async def test_a_second_instance_with_workers_cannot_share_the_port(tmp_path: Path) -> None:
    """SO_REUSEPORT would let it join the port, and the kernel spread requests between two
    tables; it must refuse to start instead."""
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    write_table(first, "table-a")
    write_table(second, "table-b")
    port = free_port()
    proc = spawn(first, port, "--workers", "2")
    try:
        await wait_ready(port)
        for extra in (("--workers", "2"), ()):
            code, log = await asyncio.to_thread(finish, spawn(second, port, *extra), 15)
            assert code == 1, log
            assert f"sidecar: cannot listen on 0.0.0.0:{port}: Address already in use" in log
            assert "Traceback" not in log
        for _ in range(20):  # new connections each time: every one is table A's
            assert await models(port) == ["table-a"]
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _ = await asyncio.to_thread(finish, proc)
    assert code == 0


def test_the_admin_port_must_differ_from_the_apis() -> None:
    done = sidecar("--config", str(EXAMPLES[0]), "--port", "4100", "--admin-port", "4100")
    assert done.returncode == 2
    assert "the admin port must differ from the API's port" in done.stderr


def test_a_host_that_does_not_resolve_is_a_clear_error() -> None:
    proc = spawn(EXAMPLES[0], free_port(), "--host", "no-such-host.invalid")
    code, log = finish(proc, 15)
    assert code == 1
    assert "cannot listen on no-such-host.invalid:" in log and "Unknown error" not in log


def test_port_out_of_range() -> None:
    done = sidecar("--config", str(EXAMPLES[0]), "--port", "99999")
    assert done.returncode == 2
    assert "--port must be 0..65535" in done.stderr


async def test_sigint_to_the_process_group_drains_workers_and_exits_0(tmp_path: Path) -> None:
    port = free_port()
    log_path = tmp_path / "log"
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "sidecar",
                "--config",
                str(EXAMPLES[0]),
                "--port",
                str(port),
                "--workers",
                "3",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            start_new_session=True,
        )
    try:
        await eventually(lambda: _count(log_path, "listening"), 3)
        await ask_demo(port)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert await asyncio.to_thread(proc.wait, 10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert log_path.read_text().count("stopped") == 3


async def _count(path: Path, word: str) -> int:
    return path.read_text().count(word)


async def replace_a_worker(proc: subprocess.Popen[bytes], port: int, table: str) -> None:
    """Kill one worker; once its replacement serves, every answer must come from `table`."""
    victim = worker_pids(proc.pid)[0]
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> bool:
        now = worker_pids(proc.pid)
        return len(now) == 2 and victim not in now

    await eventually(replaced, True)
    await wait_ready(port)
    for _ in range(12):  # new connections each time: both workers answer some
        assert await models(port) == [table]


async def test_a_replaced_worker_serves_the_reloaded_table(tmp_path: Path) -> None:
    path = tmp_path / "table.yaml"
    write_table(path, "old-table")
    port = free_port()
    proc = spawn(path, port, "--workers", "2")
    try:
        await wait_ready(port)
        write_table(path, "new-table")
        proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.5)
        await replace_a_worker(proc, port, "new-table")
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _ = await asyncio.to_thread(finish, proc)
    assert code == 0


async def test_a_replaced_worker_serves_the_table_of_the_last_file_change(
    tmp_path: Path,
) -> None:
    """Edit the file (workers reload it), break it (refused), kill a worker: its replacement
    must serve the edited table, not the one from start-up."""
    path = tmp_path / "table.yaml"
    write_table(path, "start-table")
    port = free_port()
    proc = spawn(path, port, "--workers", "2")
    try:
        await wait_ready(port)
        write_table(path, "edited-table")

        async def all_edited() -> bool:
            return all([await models(port) == ["edited-table"] for _ in range(6)])

        await eventually(all_edited, True)
        path.write_text("model_list: [broken\n")
        await asyncio.sleep(1.5)  # the broken file is seen (and refused) before the kill
        await replace_a_worker(proc, port, "edited-table")
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _ = await asyncio.to_thread(finish, proc)
    assert code == 0


async def test_a_starting_worker_survives_a_sighup(tmp_path: Path) -> None:
    """The supervisor forwards SIGHUP on every file change; one that reaches a worker before
    its loop handles SIGHUP must not kill it (its default action)."""
    port = free_port()
    proc = spawn(EXAMPLES[0], port, "--workers", "2")
    try:
        await wait_ready(port)
        for _ in range(3):
            victim = worker_pids(proc.pid)[0]
            os.kill(victim, signal.SIGKILL)
            for _ in range(40):  # across the replacement's whole start
                proc.send_signal(signal.SIGHUP)
                await asyncio.sleep(0.02)

            async def settled(victim: int = victim) -> bool:
                now = worker_pids(proc.pid)
                return len(now) == 2 and victim not in now

            await eventually(settled, True)
        await asyncio.sleep(1.0)  # a worker killed by a SIGHUP would be replaced by now
        await wait_ready(port)
    finally:
        proc.send_signal(signal.SIGTERM)
        code, log = await asyncio.to_thread(finish, proc)
    assert code == 0
    assert "exited with -1" not in log, log


async def test_a_change_while_a_worker_starts_reaches_it(tmp_path: Path) -> None:
    """A SIGHUP that arrives while a replacement worker starts (after it loaded the file,
    before its loop handles the signal) must still make it load the new table."""
    path = tmp_path / "table.yaml"
    write_table(path, "table-0")
    port = free_port()
    proc = spawn(path, port, "--workers", "2")
    try:
        await wait_ready(port)
        for round in range(1, 4):
            before = worker_pids(proc.pid)
            os.kill(before[0], signal.SIGKILL)
            deadline = time.monotonic() + START_LIMIT
            while not set(worker_pids(proc.pid)) - set(before):  # the replacement is forked
                assert time.monotonic() < deadline
                await asyncio.sleep(0.002)
            write_table(path, f"table-{round}")
            proc.send_signal(signal.SIGHUP)

            async def all_new(want: str = f"table-{round}") -> bool:
                return all([await models(port) == [want] for _ in range(8)])

            await eventually(all_new, True)
    finally:
        proc.send_signal(signal.SIGTERM)
        code, _ = await asyncio.to_thread(finish, proc)
    assert code == 0


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


async def test_workers_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    port = free_port()
    proc = spawn(EXAMPLES[0], port, "--workers", "2")
    await wait_ready(port)
    workers = worker_pids(proc.pid)
    assert len(workers) == 2
    proc.kill()  # SIGKILL: the supervisor cannot pass anything on
    proc.wait()

    async def gone() -> bool:
        return not any(alive(pid) for pid in workers)

    try:
        await eventually(gone, True)
    finally:
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert proc.stderr is not None
    proc.stderr.close()


class socket_bound:
    """A port held by a listening socket of this process."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()
