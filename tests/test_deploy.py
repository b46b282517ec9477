"""Static checks of the container files: hadolint, `docker compose config`, `promtool check config`.

The real build-run-scrape check is scripts/container-check.sh (podman; minutes, not seconds).
"""

from __future__ import annotations

import json
import re

import pytest
import yaml
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


def test_hadolint_is_clean_on_the_balancer_image():
    result = run(tool("hadolint"), "deploy/haproxy/Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_haproxy_accepts_its_config():
    result = run(tool("haproxy"), "-c", "-f", "deploy/haproxy/haproxy.cfg")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_failover_stack_balances_and_scrapes_every_replica_by_its_dns_name(tmp_path):
    result = run(tool("docker-compose"), "-f", "deploy/failover/docker-compose.yml", "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    replicas = services["roberta"]
    assert replicas["deploy"]["replicas"] == 3 and replicas["restart"] == "no"
    assert "ports" not in replicas, "replicas are reached through the balancer only"
    port = 8000
    # HAProxy fills its server slots from the service's DNS name; Prometheus discovers the same name.
    haproxy = (REPO / "deploy/haproxy/haproxy.cfg").read_text()
    (template,) = re.findall(r"^\s*server-template \S+ (\d+) (\S+)$", haproxy, flags=re.M)
    assert template[1] == f"roberta:{port}" and int(template[0]) >= replicas["deploy"]["replicas"]
    config = yaml.safe_load((REPO / "deploy/failover/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "roberta"]
    assert job["dns_sd_configs"] == [{"names": ["roberta"], "type": "A", "port": port, "refresh_interval": "2s"}]
    # A POST that failed on one replica (killed, draining) is sent to another.
    (retry_on,) = re.findall(r"^\s*retry-on (.+)$", haproxy, flags=re.M)
    assert {"conn-failure", "empty-response", "503"} <= set(retry_on.split())
    assert re.search(r"^\s*option redispatch", haproxy, flags=re.M) and "option http-buffer-request" in haproxy
    # promtool resolves rule_files beside the config, as the container mounts them
    (tmp_path / "prometheus.yml").write_text((REPO / "deploy/failover/prometheus.yml").read_text())
    (tmp_path / "rules.yml").write_text((REPO / "deploy/prometheus/rules.yml").read_text())
    result = run(tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
