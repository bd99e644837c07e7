"""Offline checks of the Kubernetes manifests (issue 7, "Kubernetes"; docs/deploy.md).

``kubectl kustomize`` renders each overlay, ``kubernetes-validate --strict`` validates every core resource,
and the Prometheus Operator resources (ServiceMonitor, PrometheusRule — CRDs that kubernetes-validate has no
schema for) are validated against the strict JSON schemas shipped in ``deploy/k8s/schemas``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import typer.main
import yaml

from tests.deploy._support import K8S, OVERLAY_IDS, OVERLAYS, ROOT, by_kind, render, run, tool

CRD_SCHEMAS = {
    "ServiceMonitor": K8S / "schemas" / "servicemonitor-monitoring-v1.json",
    "PrometheusRule": K8S / "schemas" / "prometheusrule-monitoring-v1.json",
}
SERVING_LABELS = {"app.kubernetes.io/name": "mimicry", "app.kubernetes.io/component": "serving"}


def _container(deployment: dict, name: str) -> dict:
    (c,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name]
    return c


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _pod_specs(docs: tuple[dict, ...]) -> dict[str, dict]:
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet"):
            out[d["metadata"]["name"]] = d["spec"]["template"]["spec"]
        elif d["kind"] == "CronJob":
            out[d["metadata"]["name"]] = d["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return out


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_overlay_passes_kubernetes_validate_strict(overlay: str, tmp_path: Path) -> None:
    docs = render(overlay)
    rendered = tmp_path / f"{overlay}.yaml"
    rendered.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    proc = run([tool("kubernetes-validate"), "--strict", "--quiet", str(rendered)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The only resources without a built-in schema are the CRDs validated below.
    warned = [line for line in proc.stdout.splitlines() if line.startswith("WARN")]
    assert all(any(f"kind {k} " in line for k in CRD_SCHEMAS) for line in warned), warned
    assert len(warned) == sum(d["kind"] in CRD_SCHEMAS for d in docs)
    core = {d["kind"] for d in docs} - set(CRD_SCHEMAS)
    expected = {
        "Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "CronJob", "NetworkPolicy",
    }  # fmt: skip
    assert core == expected


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_crds_validate_against_shipped_schemas(overlay: str) -> None:
    docs = render(overlay)
    crds = [d for d in docs if d["kind"] in CRD_SCHEMAS]
    assert {d["kind"] for d in crds} == set(CRD_SCHEMAS)
    for d in crds:
        schema = json.loads(CRD_SCHEMAS[d["kind"]].read_text())
        jsonschema.Draft202012Validator(schema).validate(d)


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        ("ServiceMonitor", lambda d: d["spec"]["endpoints"][0].update(intervall="15s"), "intervall"),
        (
            "ServiceMonitor",
            lambda d: d["spec"]["endpoints"][0].update(interval="15 seconds"),
            "does not match",
        ),
        (
            "PrometheusRule",
            lambda d: d["spec"]["groups"][0]["rules"][0].update(alert="X"),
            "not valid under any",
        ),
        ("PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr"), "'expr' is a required"),
    ],
)
def test_crd_schemas_reject_invalid_resources(kind: str, mutate, message: str) -> None:
    docs = render("gpu")
    doc = copy.deepcopy(next(d for d in docs if d["kind"] == kind))
    mutate(doc)
    schema = json.loads(CRD_SCHEMAS[kind].read_text())
    with pytest.raises(jsonschema.ValidationError, match=message):
        jsonschema.Draft202012Validator(schema).validate(doc)


def test_gpu_overlay_serves_through_triton_on_gpus() -> None:
    docs = render("gpu")
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    serving = _container(deployments["mimicry-serving"], "serving")
    env = _env(serving)
    assert env["MIMICRY_SERVE_BACKEND"]["value"] == "triton"
    assert env["MIMICRY_SERVE_DEVICE"]["value"] == "cuda"
    host, port = env["MIMICRY_SERVE_TRITON_URL"]["value"].split(":")
    assert host == "mimicry-triton"
    assert {p["name"]: p["port"] for p in services[host]["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }
    assert int(port) == 8000
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert serving["image"] == "ghcr.io/mimicry-project/mimicry:0.1.0"

    triton = _container(deployments["mimicry-triton"], "triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["image"].endswith("-py3")
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    mounts = {m["name"]: m for m in triton["volumeMounts"]}
    assert f"--model-repository={mounts['registry']['mountPath']}" in triton["args"]
    assert mounts["registry"]["readOnly"] is True
    probes = {triton["livenessProbe"]["httpGet"]["path"], triton["readinessProbe"]["httpGet"]["path"]}
    assert probes == {"/v2/health/live", "/v2/health/ready"}
    # Triton and the service read the same registry volume.
    claims = {
        name: {v["persistentVolumeClaim"]["claimName"] for v in d["spec"]["template"]["spec"]["volumes"]
               if "persistentVolumeClaim" in v}
        for name, d in deployments.items()
    }  # fmt: skip
    assert "mimicry-registry" in claims["mimicry-triton"] & claims["mimicry-serving"]


def test_cpu_overlay_runs_onnxruntime_without_triton_or_gpus() -> None:
    docs = render("cpu")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"mimicry-serving", "mimicry-audit"}
    assert "mimicry-triton" not in by_kind(docs, "Service")
    serving = _container(deployments["mimicry-serving"], "serving")
    env = _env(serving)
    assert env["MIMICRY_SERVE_BACKEND"]["value"] == "onnxruntime"
    assert env["MIMICRY_SERVE_DEVICE"]["value"] == "cpu"
    assert serving["image"] == "ghcr.io/mimicry-project/mimicry:0.1.0-cpu"
    assert "nvidia.com/gpu" not in yaml.safe_dump_all(docs)


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_serving_deployment_probes_resources_and_secret(overlay: str) -> None:
    docs = render(overlay)
    dep = by_kind(docs, "Deployment")["mimicry-serving"]
    c = _container(dep, "serving")
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": 3000}
    assert c["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    assert "memory" in c["resources"]["limits"]
    env = _env(c)
    assert env["MIMICRY_SERVE_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "mimicry-api-token", "key": "token"}
    }
    assert "Secret" not in {d["kind"] for d in docs}  # the token is never committed
    # The settings file comes from the generated ConfigMap, mounted where MIMICRY_SERVE_CONFIG points.
    config_dir = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "config")
    assert env["MIMICRY_SERVE_CONFIG"]["value"] == f"{config_dir}/serve.yaml"
    cm_name = next(
        v["configMap"]["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "config"
    )
    assert "serve.yaml" in by_kind(docs, "ConfigMap")[cm_name]["data"]

    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    svc = by_kind(docs, "Service")["mimicry-serving"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    pdb = by_kind(docs, "PodDisruptionBudget")["mimicry-serving"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["mimicry-serving"]
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "mimicry-serving",
    }
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_every_pod_is_restricted_non_root(overlay: str) -> None:
    docs = render(overlay)
    namespace = by_kind(docs, "Namespace")["mimicry"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    pods = _pod_specs(docs)
    assert set(pods) >= {"mimicry-serving", "mimicry-audit", "mimicry-audit-nightly"}
    for name, pod in pods.items():
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] > 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert pod["automountServiceAccountToken"] is False, name
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), name
    assert all(d["metadata"]["namespace"] == "mimicry" for d in docs if d["kind"] != "Namespace")


def test_serving_config_is_valid_and_overlay_env_selects_triton(tmp_path: Path, monkeypatch) -> None:
    from serving.settings import ServeSettings

    docs = render("gpu")
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mimicry-serving")
    )
    path = tmp_path / "serve.yaml"
    path.write_text(cm["data"]["serve.yaml"])
    monkeypatch.setenv("MIMICRY_SERVE_CONFIG", str(path))
    base = ServeSettings()
    assert base.backend == "onnxruntime"
    assert str(base.registry) == "/models/registry"
    env = _env(_container(by_kind(docs, "Deployment")["mimicry-serving"], "serving"))
    for name, e in env.items():
        if name.startswith("MIMICRY_SERVE_") and "value" in e and name != "MIMICRY_SERVE_CONFIG":
            monkeypatch.setenv(name, e["value"])
    gpu = ServeSettings()
    assert (gpu.backend, gpu.device, gpu.triton_url) == ("triton", "cuda", "mimicry-triton:8000")


def test_audit_policy_configmap_is_the_default_policy() -> None:
    from audit.policy import load_policy

    assert load_policy(K8S / "base" / "config" / "audit-policy.yaml") == load_policy(None)
    docs = render("cpu")
    cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mimicry-audit-policy")
    )
    assert yaml.safe_load(cm["data"]["policy.yaml"]) == yaml.safe_load(
        (ROOT / "audit" / "policy_default.yaml").read_text()
    )


def _cli_options(command: str) -> set[str]:
    from audit.cli import app

    click_group = typer.main.get_command(app)
    cmd = click_group.commands[command]  # type: ignore[attr-defined]
    return {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}


@pytest.mark.parametrize(
    ("kind", "name", "command"),
    [("Deployment", "mimicry-audit", "watch"), ("CronJob", "mimicry-audit-nightly", "run")],
)
def test_audit_workloads_use_real_cli_options(kind: str, name: str, command: str) -> None:
    docs = render("gpu")
    pod = _pod_specs(docs)[name]
    (c,) = pod["containers"]
    assert c["command"] == ["mimicry", "audit", command]
    options = _cli_options(command)
    used = {a.split("=", 1)[0] for a in c["args"]}
    assert used <= options, used - options
    assert "--reference" in used
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    for arg in c["args"]:
        if arg.startswith(("--registry=", "--reference=", "--policy=")):
            path = arg.split("=", 1)[1]
            assert any(path == m or path.startswith(m + "/") for m in mounts), arg
    if command == "run":
        assert any(a.startswith("--pushgateway=http://") for a in c["args"])
        assert by_kind(docs, "CronJob")[name]["spec"]["concurrencyPolicy"] == "Forbid"
    else:
        assert "--metrics-port=9400" in c["args"]
        assert "--metrics-host=0.0.0.0" in c["args"]
        assert by_kind(docs, "Deployment")[name]["spec"]["strategy"]["type"] == "Recreate"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_servicemonitors_select_services_named_like_the_alert_jobs(overlay: str) -> None:
    docs = render(overlay)
    services = by_kind(docs, "Service")
    monitors = by_kind(docs, "ServiceMonitor")
    expected = {"mimicry-serving", "mimicry-audit"} | ({"mimicry-triton"} if overlay == "gpu" else set())
    assert set(monitors) == expected
    for name, sm in monitors.items():
        selector = sm["spec"]["selector"]["matchLabels"]
        matched = [
            s for s in services.values() if selector.items() <= s["metadata"].get("labels", {}).items()
        ]
        assert [s["metadata"]["name"] for s in matched] == [name]  # job label = Service name = rules' job
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names


def test_network_policies_allow_exactly_the_needed_flows() -> None:
    docs = render("gpu")
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["mimicry-default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    serving = policies["mimicry-serving-ingress"]["spec"]
    assert serving["podSelector"]["matchLabels"] == SERVING_LABELS
    assert [p["port"] for r in serving["ingress"] for p in r["ports"]] == [3000]
    triton = policies["mimicry-triton-ingress"]["spec"]["ingress"]
    inference, metrics = triton
    assert inference["from"] == [{"podSelector": {"matchLabels": SERVING_LABELS}}]
    assert sorted(p["port"] for p in inference["ports"]) == [8000, 8001]
    assert [p["port"] for p in metrics["ports"]] == [8002]
    audit = policies["mimicry-audit-metrics"]["spec"]["ingress"]
    assert [p["port"] for r in audit for p in r["ports"]] == [9400]
