"""Write deploy/prometheus/rules.yml into the PrometheusRule of deploy/k8s/components/monitoring.

Prometheus reads a rule file; prometheus-operator reads the same groups inside an object, and kustomize cannot
put a file's content into an object's field. So the object is generated, and tests/test_k8s.py checks it matches.
"""

from __future__ import annotations

from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "deploy/prometheus/rules.yml"
OBJECT = REPO / "deploy/k8s/components/monitoring/prometheusrule.yaml"
HEADER = """\
# Generated from deploy/prometheus/rules.yml by scripts/k8s_rules.py (tests/test_k8s.py checks that they hold the
# same rules): edit rules.yml, then run `python scripts/k8s_rules.py`.
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as `|` blocks, as they are written in rules.yml."""


_Dumper.add_representer(
    str, lambda dumper, text: dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)
)


def prometheus_rule(groups: dict) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        # kube-prometheus-stack only loads rules labelled with its release name; set yours.
        "metadata": {"name": "roberta-serve", "labels": {"release": "kube-prometheus-stack"}},
        "spec": groups,
    }


def main() -> None:
    groups = yaml.safe_load(RULES.read_text())
    OBJECT.write_text(HEADER + yaml.dump(prometheus_rule(groups), Dumper=_Dumper, sort_keys=False, width=120))
    print(f"wrote {OBJECT.relative_to(REPO)}")


if __name__ == "__main__":
    main()
