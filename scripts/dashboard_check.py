"""Run every query of a Grafana dashboard against a live Prometheus; each must return data.

  python scripts/dashboard_check.py --prometheus http://127.0.0.1:9091 deploy/grafana/roberta-serve.json

Grafana itself is not needed: its variables are replaced as Grafana replaces them for "All" ($job, $model: their
allValue), and its interval macros by fixed windows. tests/test_dashboard.py uses the same functions offline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path

# What Grafana puts in place of its macros; 1m covers four scrapes at the default 15 s.
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}


def panels(dashboard: dict) -> Iterator[dict]:
    """Every panel, those inside collapsed rows included."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable, variables and macros replaced."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield f"panel {panel['title']!r} {target['refId']}", expand(target["expr"], dashboard)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            yield f"variable ${variable['name']}", expand(label_values_series(query), dashboard)


def expand(expr: str, dashboard: dict) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            expr = expr.replace(f"${variable['name']}", variable.get("allValue") or ".*")
    return expr


def label_values_series(query: str) -> str:
    """label_values(series, label) -> the series itself: what Grafana asks Prometheus for."""
    if query.startswith("label_values(") and query.endswith(")"):
        inner = query[len("label_values(") : -1]
        return inner.rsplit(",", 1)[0].strip()
    return query


def main() -> int:
    import httpx

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dashboard", type=Path)
    parser.add_argument("--prometheus", default="http://127.0.0.1:9091")
    args = parser.parse_args()
    dashboard = json.loads(args.dashboard.read_text())
    empty = 0
    for where, expr in queries(dashboard):
        answer = httpx.get(f"{args.prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
        if answer.get("status") != "success":
            print(f"ERROR {where}: {answer.get('error')}\n    {expr}")
            empty += 1
            continue
        series = answer["data"]["result"]
        values = sorted(float(item["value"][1]) for item in series)
        shown = "" if not values else f" (values {values[0]:.4g} .. {values[-1]:.4g})"
        print(f"{'ok   ' if series else 'EMPTY'} {len(series):3d} series  {where}{shown}")
        empty += not series
    print(f"{'every query returned data' if not empty else f'{empty} queries returned nothing'}")
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
