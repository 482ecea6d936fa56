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

from sidecar import cli
from sidecar import config as configs
from sidecar.proxy import ADMIN_ENDPOINTS
from sidecar.routes import Endpoint, match
from tests.fakes import free_port
from tests.test_cli import wait_ready

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


def carried_config(docs: list[dict[str, Any]], tmp_path: Path) -> configs.Config:
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    secret = next(d for d in docs if d["kind"] == "Secret")
    file = tmp_path / "config.yaml"
    file.write_text(config_map["data"]["config.yaml"])
    return configs.load(file, environ=secret["stringData"])


ANY_ADDRESS = ("0.0.0.0", "::")


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_probes_reach_what_the_container_listens_on(path: Path, tmp_path: Path) -> None:
    """The kubelet probes from the node, at the pod's IP: each probe's port must be a listener
    bound to every address (not the pod's loopback), serving the probe's path."""
    (gateway,) = containers(path)
    config = carried_config(documents(path), tmp_path)
    args = cli._parser().parse_args(gateway["args"])
    api_port = args.port if args.port is not None else config.server.port
    api_host = args.host if args.host is not None else config.server.host
    served: dict[int, tuple[str, frozenset[Endpoint] | None]] = {api_port: (api_host, None)}
    admin_port = args.admin_port if args.admin_port is not None else config.server.admin_port
    if admin_port is not None:
        served[admin_port] = (config.server.admin_host, ADMIN_ENDPOINTS)
    named = {p["name"]: p["containerPort"] for p in gateway["ports"]}
    assert set(named.values()) <= set(served), "a declared port nothing listens on"
    probes = [
        gateway[k] for k in ("startupProbe", "readinessProbe", "livenessProbe") if k in gateway
    ]
    assert len(probes) >= 2
    for probe in probes:
        get = probe["httpGet"]
        port = named[get["port"]] if isinstance(get["port"], str) else get["port"]
        assert "host" not in get, "a probe host is the node's address, not the pod's"
        host, endpoints = served[port]
        assert host in ANY_ADDRESS, f"port {port} listens on {host}: the kubelet cannot reach it"
        endpoint = match("GET", get["path"])
        assert endpoints is None or endpoint in endpoints, get["path"]


def test_the_app_beside_the_sidecar_reaches_its_api(tmp_path: Path) -> None:
    path = DEPLOY / "k8s" / "sidecar.yaml"
    deployment = next(d for d in documents(path) if d["kind"] == "Deployment")
    (app,) = deployment["spec"]["template"]["spec"]["containers"]
    base = next(e["value"] for e in app["env"] if e["name"] == "OPENAI_BASE_URL")
    (gateway,) = containers(path)
    args = cli._parser().parse_args(gateway["args"])
    assert base == f"http://{args.host}:{args.port}/v1"
    assert args.host == "127.0.0.1"  # the API is for the pod alone


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_carried_config_loads(path: Path, tmp_path: Path) -> None:
    loaded = carried_config(documents(path), tmp_path)
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


def test_the_replicas_share_the_redis_they_are_given(tmp_path: Path) -> None:
    path = DEPLOY / "k8s" / "replicas-redis.yaml"
    docs = documents(path)
    shared = carried_config(docs, tmp_path).shared
    assert shared is not None
    service = next(d for d in docs if d["kind"] == "Service" and "redis" in d["metadata"]["name"])
    assert (shared.host, shared.port) == (
        service["metadata"]["name"],
        service["spec"]["ports"][0]["port"],
    )
    redis = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == shared.host
    )
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["args"][:2] == ["--requirepass", "$(REDIS_PASSWORD)"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert shared.password == secret["stringData"]["REDIS_PASSWORD"]
    gateway = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] != shared.host
    )
    assert gateway["spec"]["replicas"] > 1
