"""Prometheus exposition (audit.prometheus) and the integration with a real Prometheus server scraping
`audit watch` and a real Pushgateway fed by `audit run --pushgateway`."""

from __future__ import annotations

import dataclasses
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


# ------------------------------------------------------------------ an audit that cannot run: error, not FAIL


def _lines(metrics: AuditMetrics) -> set[str]:
    return set(generate_latest(metrics.registry).decode().splitlines())


def _status_lines(model: str, version: str, status: str, name: str = "mimicry_audit_status") -> set[str]:
    return {
        f'{name}{{model="{model}",status="{s}",version="{version}"}} {1.0 if s == status else 0.0}'
        for s in ("passed", "failed", "error")
    }


def test_an_errored_audit_is_an_error_state_and_replaces_the_versions_old_series() -> None:
    metrics = AuditMetrics()
    report = _report()
    metrics.observe(report)
    assert _status_lines("cxr", "3", "passed") <= _lines(metrics)
    # The next audit of the same version: gradcam errored, so it has no results and only N/A verdicts.
    m = ModelAudit("cxr", 3, "ab" * 32, "toy", ["gradcam"], errors=["method gradcam: SaliencyError: x"])
    m.verdicts = [Verdict("nss", "Gaze", "gradcam", "N/A", None, 0.0, ">", True, "check not run")]
    metrics.observe(AuditReport({}, report.policy, [m], [], started=2000.0, finished=2001.0))
    lines = _lines(metrics)
    assert _status_lines("cxr", "3", "error") <= lines
    text = "\n".join(lines)
    assert "mimicry_audit_check_passed{" not in text  # neither the old PASS nor a FAIL
    assert "mimicry_audit_score{" not in text
    assert 'mimicry_audit_runs_total{status="error"} 1.0' in lines
    assert 'mimicry_audit_runs_total{status="failed"} 0.0' in lines
    assert "mimicry_audit_last_success_timestamp_seconds 1012.5" in lines  # not advanced by the errored run
    # A version whose audit raised before it produced a report.
    metrics.observe_error("cxr", 4)
    assert _status_lines("cxr", "4", "error") <= _lines(metrics)
    # A probe that errored: probe_status error, probe_up 0.
    metrics.observe_probe(AuditReport({}, report.policy, [m], [], started=3000.0, finished=3001.0))
    lines = _lines(metrics)
    assert _status_lines("cxr", "3", "error", "mimicry_audit_probe_status") <= lines
    assert "mimicry_audit_probe_up 0.0" in lines


# IG's batch_size must be positive: valid on load (an integer parameter of IG), refused when IG runs.
BROKEN = """
version: 1
methods: [gradcam, integrated_gradients]
method_params:
  integrated_gradients: {steps: 4, batch_size: 0}
checks: [gaze, runtime_reproducibility]
bootstrap: {n_resamples: 200}
criteria:
  - {id: runtime_probs, group: Runtime, label: PROBS, check: runtime_reproducibility,
     metric: probs_max_abs_diff, statistic: max, op: "<=", threshold: 1.0e-4}
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prom_error")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=6, size=48, seed=5))
    Registry(root / "registry").publish(
        LeftRightToyNet().eval(),
        name="lr",
        held_batch=torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
        preprocessing=PreprocessSpec(size=32),
    )
    (root / "broken.yaml").write_text(BROKEN)
    return root


def test_watch_shows_an_audit_that_cannot_run_as_an_error(tiny: Path) -> None:
    from audit.policy import load_policy
    from audit.runner import AuditConfig
    from audit.watch import watch

    config = AuditConfig(
        registry=tiny / "registry",
        models=["all"],
        reference=tiny / "ref",
        policy=load_policy(tiny / "broken.yaml"),
        history_path=None,
    )
    metrics = AuditMetrics()
    reports: list[AuditReport] = []
    assert watch(config, metrics, interval_s=3600, poll_s=0.01, max_cycles=1, on_report=reports.append) == 1
    assert reports[0].status == "error"
    lines = _lines(metrics)
    assert _status_lines("lr", "1", "error") <= lines
    # gradcam ran and passed; integrated_gradients errored: no verdict series for it at all (not a FAIL)
    check = (
        'mimicry_audit_check_passed{check="runtime_reproducibility",method="gradcam",model="lr",version="1"}'
    )
    assert f"{check} 1.0" in lines
    assert 'method="integrated_gradients"' not in "\n".join(lines)
    # The reference store vanishes: the audit raises; the loop records an error state and goes on.
    gone = dataclasses.replace(config, reference=tiny / "no-such-reference")
    assert watch(gone, metrics, interval_s=3600, poll_s=0.01, max_cycles=1) == 0
    assert _status_lines("lr", "1", "error") <= _lines(metrics)
    assert check not in "\n".join(_lines(metrics))


@pytest.mark.integration
def test_pushgateway_receives_an_error_state_from_audit_run(tiny: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    gw_bin = shutil.which("prometheus-pushgateway") or shutil.which("pushgateway")
    if gw_bin is None:
        pytest.fail("the prometheus-pushgateway binary is not installed: run scripts/system-deps.sh")
    port = _free_port()
    gw = subprocess.Popen(
        [gw_bin, f"--web.listen-address=127.0.0.1:{port}", f"--persistence.file={tiny / 'gw.db'}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/-/ready", time.monotonic() + 30)
        res = CliRunner().invoke(
            app,
            [
                "run", "--registry", str(tiny / "registry"), "--model", "lr:1",
                "--reference", str(tiny / "ref"), "--policy", str(tiny / "broken.yaml"),
                "--no-history", "--no-progress",
                "--pushgateway", f"http://127.0.0.1:{port}",
            ],
        )  # fmt: skip
        assert res.exit_code == 3, res.output  # could not run: neither 0 (passed) nor 1 (a gate FAILed)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    finally:
        _stop(gw)
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    status = {
        s.labels["status"]: s.value
        for s in samples
        if s.name == "mimicry_audit_status" and s.labels.get("job") == "mimicry_audit"
    }
    assert status == {"passed": 0.0, "failed": 0.0, "error": 1.0}
    runs = {s.labels["status"]: s.value for s in samples if s.name == "mimicry_audit_runs_total"}
    assert runs == {"passed": 0.0, "failed": 0.0, "error": 1.0}
    checks = [s for s in samples if s.name == "mimicry_audit_check_passed"]
    assert checks
    assert all(s.labels["method"] == "gradcam" for s in checks)  # the errored method has no verdict series
    assert all(s.value == 1.0 for s in checks)  # and nothing reads as a FAIL
