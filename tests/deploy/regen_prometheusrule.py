"""Regenerate ``deploy/k8s/base/prometheusrule.yaml`` from ``deploy/prometheus/rules/mimicry.rules.yml``.

``python -m tests.deploy.regen_prometheusrule`` — the rules file is the one source; the PrometheusRule carries
its ``groups`` verbatim (indented under ``spec``) so that the Prometheus Operator loads the same alerts.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "rules" / "mimicry.rules.yml"
TARGET = ROOT / "deploy" / "k8s" / "base" / "prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/prometheus/rules/mimicry.rules.yml (the one source of the rules): the same `groups`
# for the Prometheus Operator. tests/deploy fails when the two differ; regenerate with
#   python -m tests.deploy.regen_prometheusrule
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: mimicry
  labels:
    app.kubernetes.io/name: mimicry
    # kube-prometheus-stack's default ruleSelector matches its Helm release label: set yours here.
    release: kube-prometheus-stack
spec:
"""


def render() -> str:
    """The PrometheusRule text for the current rules file."""
    src = RULES.read_text(encoding="utf-8")
    body = src[src.index("groups:") :]
    return HEADER + "".join(("  " + line if line.strip() else line) for line in body.splitlines(True))


def main() -> None:
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
