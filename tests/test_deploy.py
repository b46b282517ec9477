"""Static checks of the container files: hadolint, `docker compose config`, `promtool check config`.

The real build-run-scrape check is scripts/container-check.sh (podman; minutes, not seconds).
"""

from __future__ import annotations

import json

import pytest
from commands import REPO, run, tool


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "deploy/prometheus/Dockerfile"])
def test_hadolint_is_clean(dockerfile):
    result = run(tool("hadolint"), dockerfile)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("files", [["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]])
def test_compose_files_are_valid(files):
    flags = [part for name in files for part in ("-f", name)]
    result = run(tool("docker-compose"), *flags, "config", "--quiet")
    assert result.returncode == 0, result.stderr


def test_compose_runs_the_service_read_only_as_non_root_and_scrapes_it():
    result = run(tool("docker-compose"), "config", "--format", "json")
    config = json.loads(result.stdout)
    service = config["services"]["roberta"]
    assert service["read_only"] is True and service["user"] == "10001"
    assert "readyz" in " ".join(service["healthcheck"]["test"])
    prometheus = (REPO / "deploy/prometheus/prometheus.yml").read_text()
    assert "roberta:8000" in prometheus


def test_promtool_accepts_the_prometheus_config():
    result = run(tool("promtool"), "check", "config", "deploy/prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
