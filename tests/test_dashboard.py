"""deploy/grafana/roberta-serve.json, offline: every query parses (promtool) and names only series that exist.

That each query returns data is checked against a live Prometheus by scripts/failover-check.sh.
"""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import yaml
from commands import REPO, run, tool

DASHBOARD = json.loads((REPO / "deploy/grafana/roberta-serve.json").read_text())


def _load_checker():
    spec = importlib.util.spec_from_file_location("dashboard_check", REPO / "scripts/dashboard_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check = _load_checker()


def exported_series() -> set[str]:
    from app.serving.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def recorded_series() -> set[str]:
    groups = yaml.safe_load((REPO / "deploy/prometheus/rules.yml").read_text())["groups"]
    return {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}


def test_every_panel_queries_prometheus_through_the_datasource_variable():
    panels = list(check.panels(DASHBOARD))
    assert len(panels) >= 10 and len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_query_parses(tmp_path):
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query:{n}", "expr": expr} for n, (_, expr) in enumerate(check.queries(DASHBOARD))
    ]}]}
    assert "$" not in json.dumps(rules), "a variable or macro was left in a query"
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("where,expr", list(check.queries(DASHBOARD)))
def test_every_query_names_series_the_service_exports_or_the_rules_record(where, expr):
    known = exported_series() | recorded_series() | {"up"}
    named = set(re.findall(r"\b(roberta[a-z0-9_:]*|up)\b(?=\s*[{\[)]|\s*$)", expr))
    assert named, (where, expr)
    assert named <= known, (where, named - known)
