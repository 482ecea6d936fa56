"""deploy/: the Kubernetes manifests validated offline against the Kubernetes schemas, the
configs they carry loaded by the sidecar itself, and the single-file executable built and run."""

from __future__ import annotations

import asyncio
import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes_validate
import pytest
import yaml

from sidecar import config as configs
from sidecar.routes import match
from tests.test_cli import wait_ready
from tests.test_errors import free_port

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))
KUBERNETES = "1.33"  # native sidecars (1.29+) and the preStop sleep action (1.30+)


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_match_the_kubernetes_schemas(path: Path) -> None:
    kinds = []
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        kinds.append(doc["kind"])
    assert {"ConfigMap", "Secret", "Deployment"} <= set(kinds)


def test_the_check_catches_a_broken_manifest() -> None:
    deployment = next(
        d for d in documents(DEPLOY / "k8s" / "gateway.yaml") if d["kind"] == "Deployment"
    )
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGet"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def containers(path: Path) -> list[dict[str, Any]]:
    found = []
    for doc in documents(path):
        if doc["kind"] == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            found += pod.get("initContainers", []) + pod["containers"]
    return [c for c in found if c["image"].startswith("sidecar")]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_gateway_container_is_locked_down_and_probed(path: Path) -> None:
    (gateway,) = containers(path)
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True
    assert gateway["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "preStop" in gateway["lifecycle"]
    probes = {
        gateway["livenessProbe"]["httpGet"]["path"],
        gateway["readinessProbe"]["httpGet"]["path"],
    }
    assert probes == {"/health/liveliness", "/health/readiness"}
    for probe in probes:
        match("GET", probe)  # routes the sidecar really serves
    assert "memory" in gateway["resources"]["limits"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_carried_config_loads(path: Path, tmp_path: Path) -> None:
    docs = documents(path)
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    file = tmp_path / "config.yaml"
    file.write_text(config_map["data"]["config.yaml"])
    loaded = configs.load(file, environ=secret["stringData"])
    assert loaded.deployments and loaded.keys


def test_dockerfile_final_stage() -> None:
    # No container engine runs here, so the image is checked as written, not built.
    text = (DEPLOY / "Dockerfile").read_text()
    stages = re.split(r"(?m)^FROM ", text)[1:]
    assert len(stages) == 2, "a build stage and a final stage"
    final = stages[-1]
    assert not re.search(r"apt-get|gcc|build-essential", final)
    user = re.search(r"(?m)^USER (\S+)", final)
    assert user is not None and user.group(1) not in ("root", "0")
    health = re.search(r"HEALTHCHECK .*?(/health/\w+)", final, re.S)
    assert health is not None and match("GET", health.group(1))
    assert 'ENTRYPOINT ["sidecar"]' in final


async def test_single_binary_serves(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, str(DEPLOY / "build_binary.py"), "--dist", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    binary = tmp_path / "sidecar"
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60)
    assert version.stdout.startswith("sidecar ")
    port = free_port()
    proc = subprocess.Popen(
        [str(binary), "--config", str(DEPLOY / "config.example.yaml"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        await wait_ready(port)
        body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        async with aiohttp.ClientSession() as http, http.post(url, json=body) as r:
            assert r.status == 200
            assert (await r.json())["choices"][0]["message"]["content"].startswith("Hello")
    finally:
        proc.terminate()
        assert await asyncio.to_thread(proc.wait, 15) == 0
