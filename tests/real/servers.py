"""Real upstream servers that nobody here wrote, started for the tests on loopback.

- llama.cpp's OpenAI-compatible server (llama-cpp-python[server]: uvicorn and FastAPI, the
  stack vLLM serves on) on a tiny random-weight model written by tiny_model.py;
- the LiteLLM proxy, another gateway, with mock_response models behind a master key.

Each runs from the virtual environment that cached_venv.sh built, named by an environment
variable that `make test` sets. Without it the tests that need the server are skipped, except
in CI, where a missing server is a failure: a build that failed must never pass unseen.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
READY_WITHIN = (
    180.0  # seconds a server may take to answer its first request (LiteLLM imports a lot)
)
CONTEXT = 256  # the llama.cpp server's context window, in tokens: small, to test its overflow error
LITELLM_KEY = "sk-litellm-test-master"  # the LiteLLM proxy's master key, sent by the sidecar


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def access_lines(self, path: str) -> list[str]:
        """The server's own access-log lines (uvicorn's) for a path: what it received, as it
        saw it, with the status it answered."""
        return [line for line in self.log_text().splitlines() if f'"POST {path} HTTP/1.1"' in line]


def venv(variable: str, what: str) -> Path:
    value = os.environ.get(variable)
    if not value:
        message = f"{variable} is not set: `make test` builds {what} and sets it"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    path = Path(value)
    if not (path / "bin" / "python").exists():
        pytest.fail(f"{variable}={value} holds no virtual environment")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(
    name: str, argv: list[str], port: int, ready_path: str, log: Path, env: dict[str, str]
) -> Server:
    out = log.open("wb")
    process = subprocess.Popen(
        argv, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, env={**os.environ, **env}
    )
    out.close()
    server = Server(name, port, process, log)
    deadline = time.monotonic() + READY_WITHIN
    while True:
        if process.poll() is not None:
            pytest.fail(f"{name} exited with {process.returncode}:\n{server.log_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{ready_path}", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        if time.monotonic() > deadline:
            stop(server)
            pytest.fail(f"{name} was not ready in {READY_WITHIN:g}s:\n{server.log_text()[-3000:]}")
        time.sleep(0.2)


def stop(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


def llama(workdir: Path) -> Iterator[Server]:
    env = venv("SIDECAR_LLAMA_VENV", "llama-cpp-python[server]")
    python = str(env / "bin" / "python")
    model = workdir / "tiny.gguf"
    subprocess.run([python, str(HERE / "tiny_model.py"), str(model)], check=True)
    port = free_port()
    argv = [python, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", "tiny"]
    argv += ["--n_ctx", str(CONTEXT), "--embedding", "true", "--n_threads", "1"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--verbose", "false"]
    server = start("llama.cpp server", argv, port, "/v1/models", workdir / "llama.log", {})
    yield server
    stop(server)


LITELLM_CONFIG = f"""
model_list:
  - model_name: mock
    litellm_params:
      model: openai/mock
      api_key: unused
      mock_response: "Hello from the LiteLLM proxy"
general_settings:
  master_key: {LITELLM_KEY}
"""


def litellm(workdir: Path) -> Iterator[Server]:
    env = venv("SIDECAR_LITELLM_VENV", "litellm[proxy]")
    config = workdir / "litellm.yaml"
    config.write_text(LITELLM_CONFIG)
    port = free_port()
    argv = [str(env / "bin" / "litellm"), "--config", str(config)]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"]
    # Offline: its model price map from the package, not the network.
    offline = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "DISABLE_SCHEMA_UPDATE": "True"}
    log = workdir / "litellm.log"
    server = start("LiteLLM proxy", argv, port, "/health/liveliness", log, offline)
    yield server
    stop(server)
