"""The deployment files parse: docker-compose.yml through Docker's own parser where the compose
plugin is installed (skipped otherwise; no daemon is needed), the Kubernetes example and the
Grafana dashboard as the YAML and JSON they claim to be, naming only metrics /metrics serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _compose_available() -> bool:
    docker = shutil.which("docker")
    return bool(docker) and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the docker compose plugin is not installed here")
def test_docker_compose_config_validates():
    env = {"POSTGRES_PASSWORD": "x", "FLOWER_BASIC_AUTH": "ops:x", "FUSIONQ_API_KEYS": "k", "PATH": "/usr/bin:/bin"}
    run = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr


def test_the_kubernetes_example_and_the_dashboard_parse_and_name_real_metrics():
    yaml = pytest.importorskip("yaml")
    documents = list(yaml.safe_load_all((ROOT / "deploy/k8s/embed-worker.yaml").read_text()))
    assert [d["kind"] for d in documents] == ["Deployment", "ScaledObject"]
    assert documents[1]["spec"]["triggers"][0]["metadata"]["listName"] == "embed"
    dashboard = json.loads((ROOT / "deploy/grafana-dashboard.json").read_text())
    served = set(re.findall(r'"(fusionq_[a-z_]+)"', (ROOT / "shared/api/metrics.py").read_text()))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = set(re.findall(r"fusionq_[a-z_]+", target["expr"]))
            # a counter family is exposed with _total, a histogram with _bucket
            assert {re.sub(r"_(total|bucket)$", "", n) for n in names} <= served, target["expr"]
