"""Unit tests of the local stack's process manager and configuration (docs/deploy.md, "Local stack").

Harmless children only (``sleep`` under ``sh``): spawning in an own session, the state file, PID-reuse
protection, stop order, SIGTERM → SIGKILL timeouts, descendants in other sessions, health waits, port blocks,
the rendered Prometheus configuration (``promtool check config``) and the CLI's usage errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil
import pytest
import yaml
from typer.testing import CliRunner

from mimicry_cli.commands import stack as stack_cmd
from mimicry_cli.stack import config as stack_config
from mimicry_cli.stack.process import (
    ProcessRecord,
    StackStartError,
    StateFileError,
    StopOutcome,
    descendants,
    group_members,
    http_ok,
    is_recorded_process,
    read_state,
    spawn,
    stop_all,
    stop_record,
    wait_healthy,
    write_state,
)
from tests.deploy._support import ROOT, run, tool

#: A harmless child; the trailing ``true`` stops ``sh`` from exec-ing ``sleep`` (that would change
#: /proc/PID/cmdline, which the PID-reuse guard compares).
SLEEP = "sleep 30; true"
RULES = ROOT / "deploy" / "prometheus" / "rules" / "mimicry.rules.yml"


@pytest.fixture
def spawned(tmp_path: Path) -> Iterator[list[tuple[ProcessRecord, subprocess.Popen[bytes]]]]:
    """Spawned children; whatever a test leaves running is SIGKILLed by group afterwards."""
    children: list[tuple[ProcessRecord, subprocess.Popen[bytes]]] = []
    yield children
    for record, proc in children:
        if is_recorded_process(record) or group_members(record):
            stop_record(record, timeout_s=0.1, kill_timeout_s=2)
        proc.poll()


def _start(
    spawned: list, tmp_path: Path, name: str, script: str, ready: str | None = None
) -> tuple[ProcessRecord, subprocess.Popen[bytes]]:
    record, proc = spawn(
        name,
        ["sh", "-c", script],
        log_path=tmp_path / "logs" / f"{name}.log",
        health_url="http://127.0.0.1:9/",
        url="http://127.0.0.1:9",
        port=9,
    )
    spawned.append((record, proc))
    if ready is not None:
        deadline = time.monotonic() + 5
        while ready not in Path(record.log).read_text():
            assert time.monotonic() < deadline, f"{name} never printed {ready!r}"
            time.sleep(0.02)
    return record, proc


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# ------------------------------------------------------------------------------------------------ spawning
def test_spawn_runs_in_own_session_and_records_identity(spawned: list, tmp_path: Path) -> None:
    record, proc = _start(spawned, tmp_path, "sleeper", "echo started; sleep 30; true", ready="started")
    assert record.pid == proc.pid
    assert record.pgid == record.pid
    assert os.getpgid(record.pid) == record.pid
    assert os.getsid(record.pid) == record.pid
    assert os.getpgid(record.pid) != os.getpgrp()
    assert record.command == ("sh", "-c", "echo started; sleep 30; true")
    assert record.create_time == psutil.Process(record.pid).create_time()
    assert Path(record.log).read_text() == "started\n"
    assert is_recorded_process(record)


def test_spawn_of_missing_executable_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(StackStartError) as info:
        spawn("ghost", [str(tmp_path / "no-such-binary")], log_path=tmp_path / "g.log", health_url="", url="")
    assert info.value.component == "ghost"


# --------------------------------------------------------------------------------------------- state file
def _record(name: str, pid: int = 4242, command: tuple[str, ...] = ("sleep", "30")) -> ProcessRecord:
    return ProcessRecord(
        name=name,
        pid=pid,
        pgid=pid,
        port=3000,
        url="http://127.0.0.1:3000",
        health_url="http://127.0.0.1:3000/readyz",
        command=command,
        started="2024-01-01T00:00:00+00:00",
        create_time=1234.5,
        log="/tmp/x.log",
    )


def test_state_file_round_trip_is_atomic_json(tmp_path: Path) -> None:
    path = tmp_path / "state" / "stack.json"
    records = [_record("triton", 11), _record("service", 12, ("python", "-m", "bentoml"))]
    write_state(path, records)
    assert read_state(path) == records
    data = json.loads(path.read_text())
    assert data["version"] == 1
    assert [c["name"] for c in data["components"]] == ["triton", "service"]
    assert data["components"][1]["command"] == ["python", "-m", "bentoml"]
    assert set(data["components"][0]) == {
        "name", "pid", "pgid", "port", "url", "health_url", "command", "started", "create_time", "log",
    }  # fmt: skip
    write_state(path, records[:1])  # replaced, never appended; no temporary file left behind
    assert read_state(path) == records[:1]
    assert sorted(p.name for p in path.parent.iterdir()) == ["stack.json"]


@pytest.mark.parametrize(
    "content",
    ["", "{not json", json.dumps({"version": 2, "components": []}), json.dumps({"version": 1}),
     json.dumps({"version": 1, "components": [{"name": "x"}]})],
    ids=["empty", "invalid-json", "other-version", "no-components", "malformed-record"],
)  # fmt: skip
def test_bad_state_files_raise_state_file_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "stack.json"
    path.write_text(content)
    with pytest.raises(StateFileError):
        read_state(path)


def test_missing_state_file_raises_state_file_error(tmp_path: Path) -> None:
    with pytest.raises(StateFileError, match="no stack state"):
        read_state(tmp_path / "stack.json")


# ---------------------------------------------------------------------------------------- PID reuse guard
def test_recycled_pid_is_never_signalled(spawned: list, tmp_path: Path) -> None:
    record, proc = _start(spawned, tmp_path, "victim", SLEEP)
    other_command = dataclasses.replace(record, command=("sh", "-c", "something else"))
    other_start = dataclasses.replace(record, create_time=record.create_time - 100.0)
    for stale in (other_command, other_start):
        assert not is_recorded_process(stale)
        assert stop_record(stale, timeout_s=0.2, kill_timeout_s=0.2) is StopOutcome.FOREIGN
    time.sleep(0.1)
    assert proc.poll() is None
    assert psutil.Process(record.pid).status() != psutil.STATUS_ZOMBIE


def test_stop_of_exited_process_is_not_running(spawned: list, tmp_path: Path) -> None:
    record, proc = _start(spawned, tmp_path, "short", "exit 3")
    assert proc.wait(timeout=5) == 3
    assert not is_recorded_process(record)
    assert stop_record(record) is StopOutcome.NOT_RUNNING


# --------------------------------------------------------------------------------------- stop and timeouts
def test_sigterm_stops_the_whole_group(spawned: list, tmp_path: Path) -> None:
    record, _ = _start(spawned, tmp_path, "group", "sleep 30 & sleep 30 & echo up; wait", ready="up")
    members = group_members(record)
    assert len(members) == 3
    assert record.pid in members
    start = time.monotonic()
    assert stop_record(record, timeout_s=5, kill_timeout_s=1) is StopOutcome.STOPPED
    assert time.monotonic() - start < 3
    assert all(_gone(pid) for pid in members)
    assert group_members(record) == []


def test_sigterm_ignored_escalates_to_sigkill_after_timeout(spawned: list, tmp_path: Path) -> None:
    record, _ = _start(spawned, tmp_path, "stubborn", "trap '' TERM; echo armed; sleep 30; sleep 30", "armed")
    members = group_members(record)
    start = time.monotonic()
    assert stop_record(record, timeout_s=0.6, kill_timeout_s=2) is StopOutcome.KILLED
    elapsed = time.monotonic() - start
    assert 0.6 <= elapsed < 2.5
    assert all(_gone(pid) for pid in members)


def test_descendants_in_another_session_are_stopped_too(spawned: list, tmp_path: Path) -> None:
    """BentoML's arbiter puts workers in sessions of their own: the group signal misses them."""
    record, _ = _start(spawned, tmp_path, "arbiter", "setsid sleep 30 & echo forked; wait", ready="forked")
    deadline = time.monotonic() + 5
    while not (
        workers := [p for p in descendants(record) if p.name() == "sleep" and os.getsid(p.pid) == p.pid]
    ):
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.02)
    (worker,) = workers
    assert os.getsid(worker.pid) == worker.pid != record.pgid
    assert stop_record(record, timeout_s=0.3, kill_timeout_s=2) is StopOutcome.KILLED
    assert _gone(worker.pid)
    assert _gone(record.pid)


def test_stop_all_goes_in_reverse_start_order(spawned: list, tmp_path: Path) -> None:
    records = [_start(spawned, tmp_path, name, SLEEP)[0] for name in ("triton", "service", "prom")]
    seen: list[str] = []
    results = stop_all(records, timeout_s=5, on_stop=lambda r, outcome: seen.append(r.name))
    assert seen == ["prom", "service", "triton"]
    assert [(r.name, o) for r, o in results] == [
        ("prom", StopOutcome.STOPPED),
        ("service", StopOutcome.STOPPED),
        ("triton", StopOutcome.STOPPED),
    ]
    assert all(_gone(r.pid) for r in records)


# -------------------------------------------------------------------------------------------------- health
def test_wait_healthy_reports_early_exit_with_log_tail(spawned: list, tmp_path: Path) -> None:
    pair = _start(spawned, tmp_path, "crasher", "echo 'cannot bind port'; exit 7")
    with pytest.raises(StackStartError) as info:
        wait_healthy([pair], timeout_s=10, poll_s=0.02, check=lambda url: False)
    assert info.value.component == "crasher"
    assert "exited with status 7" in str(info.value)
    assert info.value.log == "cannot bind port\n"


def test_wait_healthy_is_bounded(spawned: list, tmp_path: Path) -> None:
    pair = _start(spawned, tmp_path, "slow", SLEEP)
    start = time.monotonic()
    with pytest.raises(StackStartError, match=r"slow: not healthy after 0 s \(http://127.0.0.1:9/\)"):
        wait_healthy([pair], timeout_s=0.3, poll_s=0.02, check=lambda url: False)
    assert time.monotonic() - start < 1.5


def test_wait_healthy_returns_once_every_component_answers(spawned: list, tmp_path: Path) -> None:
    pairs = [_start(spawned, tmp_path, n, SLEEP) for n in ("a", "b")]
    calls: list[str] = []

    def check(url: str) -> bool:
        calls.append(url)
        return len(calls) > 2

    wait_healthy(pairs, timeout_s=5, poll_s=0.01, check=check)
    assert len(calls) == 4  # a, b (both not yet), then a, b healthy


@pytest.fixture
def http_server() -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/-/ready" else 503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_http_ok_only_for_200(http_server: str) -> None:
    assert http_ok(http_server + "/-/ready")
    assert not http_ok(http_server + "/readyz")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not http_ok(f"http://127.0.0.1:{closed}/-/ready", timeout_s=0.5)


# ----------------------------------------------------------------------------------------- ports and config
def test_default_ports_are_the_compose_ports_and_base_is_a_block() -> None:
    assert stack_config.assign_ports() == {
        "service": 3000, "triton_http": 8000, "triton_grpc": 8001, "triton_metrics": 8002,
        "audit": 9400, "prometheus": 9090, "pushgateway": 9091,
    }  # fmt: skip
    assert stack_config.assign_ports(20000) == {
        "service": 20000, "triton_http": 20001, "triton_grpc": 20002, "triton_metrics": 20003,
        "audit": 20004, "prometheus": 20005, "pushgateway": 20006,
    }  # fmt: skip
    for bad in (80, 65530):
        with pytest.raises(stack_config.StackConfigError):
            stack_config.assign_ports(bad)


def test_busy_port_is_named() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(
            stack_config.StackConfigError, match=f"port {port} \\(audit\\) on 127.0.0.1 is in use"
        ):
            stack_config.check_ports_free({"audit": port})


def test_prometheus_config_rewrites_targets_and_rule_path_only(tmp_path: Path) -> None:
    targets = {
        "mimicry-serving": "127.0.0.1:20000",
        "mimicry-audit": "127.0.0.1:20004",
        "mimicry-pushgateway": "127.0.0.1:20006",
    }
    rendered = stack_config.render_prometheus_config(targets, scrape_interval="1s")
    original = yaml.safe_load(stack_config.PROMETHEUS_YML.read_text())
    assert rendered["rule_files"] == [str(RULES)]
    assert rendered["global"] == {**original["global"], "scrape_interval": "1s", "evaluation_interval": "1s"}
    jobs = {sc["job_name"]: sc for sc in rendered["scrape_configs"]}
    assert list(jobs) == ["mimicry-serving", "mimicry-audit", "mimicry-pushgateway"]  # no Triton job
    for job, target in targets.items():
        assert jobs[job]["static_configs"] == [{"targets": [target]}]
    assert jobs["mimicry-pushgateway"]["honor_labels"] is True
    kept = stack_config.render_prometheus_config({**targets, "mimicry-triton": "127.0.0.1:20003"})
    assert kept["global"] == original["global"]
    assert len(kept["scrape_configs"]) == 4
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(kept, sort_keys=False))
    proc = run([tool("promtool"), "check", "config", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 1 rule files found" in proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        ({"mimicry-serving": "0.0.0.0:3000"}, "must be on 127.0.0.1"),
        ({"mimicry-grafana": "127.0.0.1:1"}, "no job"),
    ],
)
def test_prometheus_config_rejects_bad_targets(targets: dict[str, str], message: str) -> None:
    with pytest.raises(stack_config.StackConfigError, match=message):
        stack_config.render_prometheus_config(targets)


# ------------------------------------------------------------------------------------------------ the plan
def _plan(tmp_path: Path, backend: str) -> list[stack_cmd.Component]:
    return stack_cmd.plan_stack(
        registry=tmp_path / "registry",
        reference=tmp_path / "ref",
        models=["cxr-toy", "cxr-toy2:1"],
        state_dir=tmp_path / "state",
        ports=stack_config.assign_ports(20000),
        backend=backend,
    )


def test_plan_binds_loopback_and_points_the_service_at_triton(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "triton")
    assert [(c.name, c.stage, c.port) for c in plan] == [
        ("triton", 0, 20001), ("audit", 0, 20004), ("pushgateway", 0, 20006),
        ("service", 1, 20000), ("prometheus", 1, 20005),
    ]  # fmt: skip
    by = {c.name: c for c in plan}
    assert by["triton"].argv[1:] == [
        "-m", "serving.triton_local", "--registry", str(tmp_path / "registry"),
        "--models", "cxr-toy,cxr-toy2:1",
        "--host", "127.0.0.1", "--http-port", "20001", "--grpc-port", "20002", "--metrics-port", "20003",
    ]  # fmt: skip
    assert by["service"].env["MIMICRY_SERVE_BACKEND"] == "triton"
    assert by["service"].env["MIMICRY_SERVE_TRITON_URL"] == "127.0.0.1:20001"
    assert by["service"].env["MIMICRY_SERVE_MODELS"] == "cxr-toy,cxr-toy2:1"
    assert by["service"].argv[-4:] == ["--host", "127.0.0.1", "--port", "20000"]
    assert "--metrics-host" in by["audit"].argv
    assert by["audit"].argv[by["audit"].argv.index("--metrics-host") + 1] == "127.0.0.1"
    assert "--web.listen-address=127.0.0.1:20006" in by["pushgateway"].argv
    assert "--web.listen-address=127.0.0.1:20005" in by["prometheus"].argv
    assert [c.health_url for c in plan] == [
        "http://127.0.0.1:20001/v2/health/ready", "http://127.0.0.1:20004/metrics",
        "http://127.0.0.1:20006/-/ready", "http://127.0.0.1:20000/readyz", "http://127.0.0.1:20005/-/ready",
    ]  # fmt: skip


def test_onnxruntime_fallback_plan_has_no_triton(tmp_path: Path) -> None:
    plan = _plan(tmp_path, "onnxruntime")
    assert [c.name for c in plan] == ["audit", "pushgateway", "service", "prometheus"]
    service = next(c for c in plan if c.name == "service")
    assert service.env["MIMICRY_SERVE_BACKEND"] == "onnxruntime"
    assert "MIMICRY_SERVE_TRITON_URL" not in service.env


def test_curl_example_is_ready_to_paste() -> None:
    assert stack_cmd.curl_example(3000) == (
        "curl -s -X POST -H 'Content-Type: application/dicom' --data-binary @FILE http://127.0.0.1:3000/v1/predict"
    )
    assert '-H "Authorization: Bearer $MIMICRY_SERVE_API_TOKEN"' in stack_cmd.curl_example(3000, token=True)


# ------------------------------------------------------------------------------------------------- the CLI
runner = CliRunner()


def test_up_rejects_missing_directories(tmp_path: Path) -> None:
    result = runner.invoke(
        stack_cmd.app,
        [
            "up",
            "--registry",
            str(tmp_path / "nope"),
            "--reference",
            str(tmp_path),
            "--state-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2
    assert "is not a directory" in result.output


def test_up_refuses_when_a_recorded_stack_is_running(spawned: list, tmp_path: Path) -> None:
    record, _ = _start(spawned, tmp_path, "service", SLEEP)
    write_state(tmp_path / "stack.json", [record])
    result = runner.invoke(
        stack_cmd.app,
        ["up", "--registry", str(tmp_path), "--reference", str(tmp_path), "--state-dir", str(tmp_path)],
    )
    assert result.exit_code == 2
    assert "already up (service)" in result.output
    assert is_recorded_process(record)


def test_up_names_a_busy_port_before_starting_anything(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        base = s.getsockname()[1] - 4  # the audit port of the block
        result = runner.invoke(
            stack_cmd.app,
            ["up", "--registry", str(tmp_path), "--reference", str(tmp_path), "--state-dir", str(tmp_path),
             "--ports", str(base)],
        )  # fmt: skip
    assert result.exit_code == 2
    assert f"port {base + 4} (audit) on 127.0.0.1 is in use" in result.output
    assert not (tmp_path / "stack.json").exists()


def test_status_and_down_use_the_state_file(spawned: list, tmp_path: Path) -> None:
    live, _ = _start(spawned, tmp_path, "pushgateway", SLEEP)
    dead, proc = _start(spawned, tmp_path, "audit", "exit 0")
    proc.wait(timeout=5)
    write_state(tmp_path / "stack.json", [dead, live])
    status = runner.invoke(stack_cmd.app, ["status", "--state-dir", str(tmp_path)])
    assert status.exit_code == 1  # one component is gone, none is healthy
    lines = status.output.splitlines()
    assert lines[1].split()[:4] == ["audit", str(dead.pid), "gone", "failing"]
    assert lines[2].split()[:4] == ["pushgateway", str(live.pid), "running", "failing"]
    down = runner.invoke(stack_cmd.app, ["down", "--state-dir", str(tmp_path), "--timeout", "5"])
    assert down.exit_code == 0, down.output
    assert down.output.splitlines()[:2] == [
        f"  pushgateway  pid {live.pid:<8} stopped",
        f"  audit        pid {dead.pid:<8} not running",
    ]
    assert _gone(live.pid)
    assert not (tmp_path / "stack.json").exists()
    again = runner.invoke(stack_cmd.app, ["down", "--state-dir", str(tmp_path)])
    assert again.exit_code == 0
    assert again.output == f"no stack recorded in {tmp_path}\n"


def test_core_stack_package_imports_no_application() -> None:
    code = (
        "import sys, mimicry_cli.stack; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('serving', 'audit')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
