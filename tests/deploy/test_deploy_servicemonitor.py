"""The serving ServiceMonitor's ``metricRelabelings`` run by a real Prometheus (docs/deploy.md, "Prometheus
and Grafana").

The Prometheus Operator gives each target the labels ``namespace``, ``pod``, ``service`` and ``endpoint``
(the port name). BentoML's request metrics carry their own ``endpoint`` (the route), which Prometheus renames
``exported_endpoint`` on the collision. This test scrapes a BentoML-shaped exposition with those target labels
and the ServiceMonitor's relabelings as a plain scrape config (the operator copies each field under its
snake_case name) and checks, through Prometheus' query API, that the rules' selectors see the routes.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from tests.deploy._support import by_kind, render

_BENTO = 'service_name="mimicry",service_version="not available"'
EXPOSITION = "\n".join(
    [
        "# TYPE bentoml_service_request_total counter",
        f'bentoml_service_request_total{{endpoint="/v1/predict",{_BENTO},http_response_code="500"}} 3',
        f'bentoml_service_request_total{{endpoint="/readyz",{_BENTO},http_response_code="200"}} 40',
        "# TYPE mimicry_predictions_total counter",
        'mimicry_predictions_total{model="cxr-ee",class="normal"} 2',
        "",
    ]
).encode()


class _Exporter(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(EXPOSITION)

    def log_message(self, *args: object) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


def _query(prom: str, expr: str) -> list[dict]:
    url = f"{prom}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


@pytest.mark.integration
def test_prometheus_sees_bentomls_routes_under_endpoint(tmp_path: Path) -> None:
    prom_bin = shutil.which("prometheus")
    assert prom_bin, "prometheus is not installed: run scripts/system-deps.sh"
    sm = by_kind(render("gpu"), "ServiceMonitor")["mimicry-serving"]
    (endpoint,) = sm["spec"]["endpoints"]
    relabel = [{_snake(k): v for k, v in r.items()} for r in endpoint.get("metricRelabelings", [])]

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    prom_port = _free_port()
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "mimicry-serving",
                "metrics_path": endpoint["path"],
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{server.server_address[1]}"],
                        # what the operator attaches to a ServiceMonitor target
                        "labels": {"endpoint": endpoint["port"], "namespace": "mimicry", "pod": "svc-a"},
                    }
                ],
                "metric_relabel_configs": relabel,
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            prom_bin,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    prom = f"http://127.0.0.1:{prom_port}"
    try:
        deadline = time.monotonic() + 60
        series: list[dict] = []
        while time.monotonic() < deadline and len(series) < 3:
            with contextlib.suppress(OSError):
                series = _query(prom, '{job="mimicry-serving", __name__!~"up|scrape_.*"}')
            time.sleep(0.5)
        assert proc.poll() is None, "prometheus exited"
        got = {(s["metric"]["__name__"], s["metric"].get("endpoint")) for s in series}
        assert got == {
            ("bentoml_service_request_total", "/v1/predict"),
            ("bentoml_service_request_total", "/readyz"),
            ("mimicry_predictions_total", "http"),  # no route: keeps the target's label
        }
        assert all("exported_endpoint" not in s["metric"] for s in series)
        # The rules' probe-free selector now finds the API series only.
        api = _query(
            prom,
            'bentoml_service_request_total{endpoint!~"/(health|healthz|livez|readyz|metrics)/?"}',
        )
        assert [s["metric"]["endpoint"] for s in api] == ["/v1/predict"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        server.shutdown()
        server.server_close()
