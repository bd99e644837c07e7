"""Prometheus exposition (audit.prometheus) and the integration with a real Prometheus server scraping
`audit watch` and a real Pushgateway fed by `audit run --pushgateway`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import torch
from prometheus_client import generate_latest
from typer.testing import CliRunner

from audit.checks import CheckResult, MetricSummary
from audit.cli import app
from audit.policy import Policy, Verdict
from audit.prometheus import AuditMetrics
from audit.runner import AuditReport, ModelAudit
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry

POLICY = """
version: 1
methods: [gradcam]
checks: [gaze, runtime_reproducibility]
bootstrap: {n_resamples: 200}
criteria:
  - {id: runtime_probs, group: Runtime, label: PROBS, check: runtime_reproducibility,
     metric: probs_max_abs_diff, statistic: max, op: "<=", threshold: 1.0e-4}
  - {id: gaze_nss, group: Gaze, label: NSS, check: gaze, metric: nss, op: ">", threshold: 100.0}
"""


def _report() -> AuditReport:
    policy = Policy.model_validate(
        {
            "criteria": [
                {
                    "id": "rt",
                    "group": "Runtime",
                    "check": "runtime_reproducibility",
                    "metric": "probs_max_abs_diff",
                    "op": "<=",
                    "threshold": 1e-4,
                },
                {"id": "nss", "group": "Gaze", "check": "gaze", "metric": "nss", "op": ">", "threshold": 0.0},
            ]
        }
    )
    r = CheckResult("gaze", "gradcam")
    r.summaries["nss"] = MetricSummary(0.25, 0.25, 0.1, 0.2, 0.3, 5)
    m = ModelAudit("cxr", 3, "ab" * 32, "toy", ["gradcam"], results=[r])
    m.verdicts = [
        Verdict("rt", "Runtime", "gradcam", "N/A", None, 1e-4, "<=", True),
        Verdict("nss", "Gaze", "gradcam", "PASS", 0.25, 0.0, ">", True),
    ]
    m.passed = True
    return AuditReport({}, policy, [m], [], started=1000.0, finished=1012.5)


def test_metric_names_labels_and_values() -> None:
    metrics = AuditMetrics()
    metrics.observe(_report())
    text = generate_latest(metrics.registry).decode()
    lines = set(text.splitlines())
    assert (
        'mimicry_audit_score{check="gaze",method="gradcam",metric="nss",model="cxr",version="3"} 0.25'
        in lines
    )
    assert 'mimicry_audit_check_passed{check="gaze",method="gradcam",model="cxr",version="3"} 1.0' in lines
    assert 'mimicry_audit_check_passed{check="runtime_reproducibility"' not in text  # all N/A: absent
    assert "mimicry_audit_last_success_timestamp_seconds 1012.5" in lines
    assert "mimicry_audit_run_duration_seconds 12.5" in lines
    assert 'mimicry_audit_runs_total{status="passed"} 1.0' in lines
    assert 'mimicry_audit_runs_total{status="error"} 0.0' in lines
    assert "# TYPE mimicry_audit_runs_total counter" in lines


# ----------------------------------------------------------------------------------------- integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _wait_http(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"{url} did not come up")


def _query(prom: str, expr: str) -> list[dict]:
    q = urllib.parse.urlencode({"query": expr})
    return _get(f"{prom}/api/v1/query?{q}")["data"]["result"]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.mark.integration
def test_prometheus_scrapes_watch_and_the_pushgateway(tmp_path: Path) -> None:
    prom_bin = shutil.which("prometheus")
    gw_bin = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if prom_bin is None or gw_bin is None:
        # scripts/system-deps.sh (run by the README test command) installs them: missing = broken set-up.
        pytest.fail(
            "the prometheus / prometheus-pushgateway binaries are not installed: run scripts/system-deps.sh"
        )
    generate_phantom_dataset(tmp_path / "ref", PhantomConfig(n=12, size=64, seed=5))
    reg = Registry(tmp_path / "registry")
    reg.publish(
        LeftRightToyNet().eval(),
        name="lr",
        held_batch=torch.rand(2, 1, 32, 32),
        preprocessing=PreprocessSpec(size=32),
    )
    (tmp_path / "policy.yaml").write_text(POLICY)
    gw_port, watch_port, prom_port = _free_port(), _free_port(), _free_port()
    procs: list[subprocess.Popen] = []
    try:
        procs.append(
            subprocess.Popen(
                [gw_bin, f"--web.listen-address=127.0.0.1:{gw_port}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        deadline = time.monotonic() + 50
        _wait_http(f"http://127.0.0.1:{gw_port}/-/ready", deadline)
        res = CliRunner().invoke(
            app,
            [
                "run",
                "--registry",
                str(tmp_path / "registry"),
                "--model",
                "lr:1",
                "--reference",
                str(tmp_path / "ref"),
                "--policy",
                str(tmp_path / "policy.yaml"),
                "--no-history",
                "--no-progress",
                "--pushgateway",
                f"http://127.0.0.1:{gw_port}",
            ],
        )
        assert res.exit_code == 1, res.output  # the NSS > 100 criterion fails by construction
        env = {**os.environ, "MIMICRY_AUDIT_HISTORY_DB": str(tmp_path / "watch.sqlite")}
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "audit.cli",
                    "watch",
                    "--registry",
                    str(tmp_path / "registry"),
                    "--reference",
                    str(tmp_path / "ref"),
                    "--policy",
                    str(tmp_path / "policy.yaml"),
                    "--interval",
                    "1h",
                    "--poll",
                    "3600",
                    "--metrics-port",
                    str(watch_port),
                    "--metrics-host",
                    "127.0.0.1",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=env,
                cwd=Path(__file__).parents[2],
            )
        )
        (tmp_path / "prometheus.yml").write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - {{job_name: audit_watch, static_configs: [{{targets: ['127.0.0.1:{watch_port}']}}]}}\n"
            "  - {job_name: pushgateway, honor_labels: true,\n"
            f"     static_configs: [{{targets: ['127.0.0.1:{gw_port}']}}]}}\n"
        )
        procs.append(
            subprocess.Popen(
                [
                    prom_bin,
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        prom = f"http://127.0.0.1:{prom_port}"
        _wait_http(f"{prom}/-/ready", deadline)
        pushed = watched = []
        while time.monotonic() < deadline:
            pushed = _query(prom, 'mimicry_audit_check_passed{job="mimicry_audit",check="gaze"}')
            watched = _query(
                prom, 'mimicry_audit_check_passed{job="audit_watch",check="runtime_reproducibility"}'
            )
            if pushed and watched:
                break
            time.sleep(1.0)
        assert pushed, "the pushed series did not arrive in Prometheus"
        assert watched, "the scraped series did not arrive in Prometheus"
        assert pushed[0]["metric"]["model"] == "lr"
        assert pushed[0]["value"][1] == "0"
        assert watched[0]["metric"]["version"] == "1"
        assert watched[0]["value"][1] == "1"
        runs = _query(prom, 'mimicry_audit_runs_total{job="audit_watch",status="failed"}')
        assert runs
        assert runs[0]["value"][1] == "1"
        score = _query(
            prom,
            'mimicry_audit_score{job="mimicry_audit",check="runtime_reproducibility",'
            'metric="probs_max_abs_diff"}',
        )
        assert score
        assert float(score[0]["value"][1]) <= 1e-4
    finally:
        for p in reversed(procs):
            _stop(p)
