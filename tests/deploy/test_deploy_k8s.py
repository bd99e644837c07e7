"""Offline checks of the Kubernetes manifests (docs/deploy.md, "Kubernetes").

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

from tests.deploy._support import (
    DEPLOY,
    GPU_OVERLAYS,
    K8S,
    OVERLAY_IDS,
    OVERLAYS,
    ROOT,
    by_kind,
    metric_catalogue,
    render,
    run,
    tool,
)

CRD_SCHEMAS = {
    "ServiceMonitor": K8S / "schemas" / "servicemonitor-monitoring-v1.json",
    "PrometheusRule": K8S / "schemas" / "prometheusrule-monitoring-v1.json",
}
SERVING_LABELS = {"app.kubernetes.io/name": "mimicry", "app.kubernetes.io/component": "serving"}
EXAMPLES = K8S / "examples"
ADAPTER = DEPLOY / "prometheus-adapter" / "values.yaml"
PROBE_ROUTES = ("/livez", "/readyz", "/healthz", "/metrics")
#: Namespaces allowed to reach the service port (docs/deploy.md, "Network").
INGRESS_NAMESPACE = "ingress-nginx"
MONITORING_NAMESPACE = "monitoring"


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


def _hpa_pod_metrics(hpa: dict) -> list[tuple[str, str]]:
    """(metric name, average value) of an HPA's Pods metrics."""
    return [
        (m["pods"]["metric"]["name"], m["pods"]["target"]["averageValue"])
        for m in hpa["spec"]["metrics"]
        if m["type"] == "Pods"
    ]


def _adapter_rules() -> dict[str, dict]:
    """The Prometheus adapter's custom rules by the metric name they expose (``name.as``)."""
    values = yaml.safe_load(ADAPTER.read_text())
    return {r["name"]["as"]: r for r in values["rules"]["custom"]}


def _bentoml_workers(env: dict[str, dict]) -> int:
    """Workers set through ``BENTOML_CONFIG_OPTIONS=services.<service name>.workers=N`` (0 when unset)."""
    import ast

    tree = ast.parse((ROOT / "serving" / "service.py").read_text())
    names = [
        kw.value.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "service"
        for kw in node.keywords
        if kw.arg == "name" and isinstance(kw.value, ast.Constant)
    ]
    assert len(names) == 1, names
    options = dict(o.split("=", 1) for o in env.get("BENTOML_CONFIG_OPTIONS", {}).get("value", "").split())
    return int(options.get(f"services.{names[0]}.workers", 0))


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
    } | ({"Ingress"} if overlay == "ingress-tls" else set())  # fmt: skip
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


@pytest.mark.parametrize("overlay", GPU_OVERLAYS, ids=[f"overlay-{o}" for o in GPU_OVERLAYS])
def test_gpu_overlay_serves_through_triton_on_shared_gpus(overlay: str) -> None:
    docs = render(overlay)
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
    assert serving["image"] == "ghcr.io/mimicry-project/mimicry:0.1.0"

    triton = _container(deployments["mimicry-triton"], "triton")
    assert triton["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert triton["image"].endswith("-py3")
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

    # GPU sharing (docs/deploy.md, "GPU sharing"): the twin and Triton each take a time-sliced share, never a
    # whole GPU; on GPU nodes (GPU Feature Discovery label), tolerating the usual GPU taint.
    for name in ("mimicry-serving", "mimicry-triton"):
        pod = deployments[name]["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        for part in ("requests", "limits"):
            assert c["resources"][part]["nvidia.com/gpu.shared"] == 1, (name, part)
            assert "nvidia.com/gpu" not in c["resources"][part], (name, part)
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, name
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # The example device-plugin configuration advertises exactly that resource.
    (cm,) = yaml.safe_load_all((EXAMPLES / "nvidia-time-slicing.yaml").read_text())
    (config,) = cm["data"].values()
    sharing = yaml.safe_load(config)["sharing"]["timeSlicing"]
    assert sharing["renameByDefault"] is True
    assert [r["name"] for r in sharing["resources"]] == ["nvidia.com/gpu"]  # renamed to nvidia.com/gpu.shared
    assert all(r["replicas"] >= 2 for r in sharing["resources"])


@pytest.mark.parametrize("overlay", GPU_OVERLAYS, ids=[f"overlay-{o}" for o in GPU_OVERLAYS])
def test_triton_has_two_replicas_a_pdb_and_scales_on_its_queue(overlay: str) -> None:
    docs = render(overlay)
    triton = by_kind(docs, "Deployment")["mimicry-triton"]
    assert "replicas" not in triton["spec"]  # the HPA owns the count
    labels = triton["spec"]["template"]["metadata"]["labels"]
    pdb = by_kind(docs, "PodDisruptionBudget")["mimicry-triton"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] == 1
    hpa = by_kind(docs, "HorizontalPodAutoscaler")["mimicry-triton"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "mimicry-triton"
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1
    ((metric, _),) = _hpa_pod_metrics(hpa)
    assert _adapter_rules()[metric]["seriesQuery"].startswith("nv_inference_pending_request_count{")


def test_cpu_overlay_runs_onnxruntime_without_triton_or_gpus() -> None:
    docs = render("cpu")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {"mimicry-serving", "mimicry-audit", "mimicry-dimse"}
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
    # Startup covers the model load; liveness is tight once up (every timeout >= 2 s: see the probe test).
    startup, live = c["startupProbe"], c["livenessProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    assert live["periodSeconds"] * live["failureThreshold"] <= 60
    env = _env(c)
    assert env["MIMICRY_SERVE_API_TOKEN"]["valueFrom"] == {
        "secretKeyRef": {"name": "mimicry-api-token", "key": "token", "optional": False}
    }
    assert env["MIMICRY_SERVE_UID_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "mimicry-uid-secret", "key": "uid-secret", "optional": False}
    }
    assert "Secret" not in {d["kind"] for d in docs}  # secrets are never committed
    assert _bentoml_workers(env) >= 2
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
    # Scaled on API requests in flight (a request metric of the Prometheus adapter), not CPU, and the
    # Deployment leaves the replica count to the HPA.
    assert "replicas" not in dep["spec"]
    assert all(m["type"] != "Resource" for m in hpa["spec"]["metrics"])
    ((metric, _),) = _hpa_pod_metrics(hpa)
    assert _adapter_rules()[metric]["seriesQuery"].startswith("bentoml_service_request_in_progress{")


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


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_dicom_listener_deployment_service_and_push_spool(overlay: str, tmp_path: Path, monkeypatch) -> None:
    """The listener (docs/serving.md, "PACS integration"): `mimicry listen` with the serving settings, its
    DICOM port as serve.yaml names it (container, Service, NetworkPolicy), a C-ECHO readiness probe, the UID
    secret of the service, and the push spool on the shared persistent volume where serve.yaml puts it, in
    the listener and in every serving replica."""
    from mimicry_cli.main import app
    from serving.settings import ServeSettings

    docs = render(overlay)
    dep = by_kind(docs, "Deployment")["mimicry-dimse"]
    pod = dep["spec"]["template"]["spec"]
    c = _container(dep, "dimse")
    assert c["command"] == ["mimicry", "listen"]
    assert "args" not in c  # the image's entrypoint arguments (bentoml serve ...) are not appended
    assert "listen" in typer.main.get_command(app).commands  # type: ignore[attr-defined]
    assert c["readinessProbe"]["exec"]["command"] == ["python", "-m", "serving.dimse", "--echo"]
    cm = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("mimicry-serving")
    )
    path = tmp_path / "serve.yaml"
    path.write_text(cm["data"]["serve.yaml"])
    env = _env(c)
    monkeypatch.setenv("MIMICRY_SERVE_CONFIG", str(path))
    for name, e in env.items():
        if name.startswith("MIMICRY_SERVE_") and "value" in e and name != "MIMICRY_SERVE_CONFIG":
            monkeypatch.setenv(name, e["value"])
    settings = ServeSettings()
    assert (settings.backend, settings.device) == ("onnxruntime", "cpu")
    assert settings.dimse.host == "0.0.0.0"
    assert settings.push.kind == "none"  # shipped default: no push until a destination is configured
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"dicom": settings.dimse.port, "metrics": settings.dimse.metrics_port}
    assert env["MIMICRY_SERVE_UID_SECRET"]["valueFrom"] == {
        "secretKeyRef": {"name": "mimicry-uid-secret", "key": "uid-secret", "optional": False}
    }
    svc = by_kind(docs, "Service")["mimicry-dimse"]
    assert svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
        "dicom": (settings.dimse.port, "dicom"),
        "metrics": (settings.dimse.metrics_port, "metrics"),
    }
    policy = by_kind(docs, "NetworkPolicy")["mimicry-dimse-ingress"]["spec"]
    assert policy["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    assert sorted(p["port"] for r in policy["ingress"] for p in r["ports"]) == sorted(ports.values())
    # the spool: one ReadWriteMany claim, mounted at push.spool_dir by the listener and the serving pods
    pvc = by_kind(docs, "PersistentVolumeClaim")["mimicry-push-spool"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    serving = by_kind(docs, "Deployment")["mimicry-serving"]["spec"]["template"]["spec"]
    for spec, name in ((pod, "dimse"), (serving, "serving")):
        (container,) = [x for x in spec["containers"] if x["name"] == name]
        claims = {
            v["name"]: v["persistentVolumeClaim"]["claimName"]
            for v in spec["volumes"]
            if "persistentVolumeClaim" in v
        }
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert claims[mounts[str(settings.push.spool_dir)]] == "mimicry-push-spool", name


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
    expected = {"mimicry-serving", "mimicry-audit", "mimicry-dimse"} | (
        {"mimicry-triton"} if overlay in GPU_OVERLAYS else set()
    )
    assert set(monitors) == expected
    for name, sm in monitors.items():
        selector = sm["spec"]["selector"]["matchLabels"]
        matched = [
            s for s in services.values() if selector.items() <= s["metadata"].get("labels", {}).items()
        ]
        assert [s["metadata"]["name"] for s in matched] == [name]  # job label = Service name = rules' job
        port_names = {p["name"] for p in matched[0]["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= port_names


def _from_namespaces(rule: dict) -> list[str]:
    return [f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for f in rule["from"]]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_network_policies_allow_exactly_the_needed_flows(overlay: str) -> None:
    docs = render(overlay)
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["mimicry-default-deny-ingress"]["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    # Every rule names its sources: no port is open to the whole cluster.
    for name, pol in policies.items():
        for rule in pol["spec"].get("ingress", []):
            assert rule.get("from"), (name, rule)
    # The service port (API, probes and the unauthenticated /metrics on one port): the ingress controller's
    # namespace and the monitoring namespace only.
    serving = policies["mimicry-serving-ingress"]["spec"]
    assert serving["podSelector"]["matchLabels"] == SERVING_LABELS
    assert [p["port"] for r in serving["ingress"] for p in r["ports"]] == [3000, 3000]
    assert sorted(ns for r in serving["ingress"] for ns in _from_namespaces(r)) == [
        INGRESS_NAMESPACE,
        MONITORING_NAMESPACE,
    ]
    audit = policies["mimicry-audit-metrics"]["spec"]["ingress"]
    assert [p["port"] for r in audit for p in r["ports"]] == [9400]
    assert [ns for r in audit for ns in _from_namespaces(r)] == [MONITORING_NAMESPACE]
    if overlay in GPU_OVERLAYS:
        inference, metrics = policies["mimicry-triton-ingress"]["spec"]["ingress"]
        assert inference["from"] == [{"podSelector": {"matchLabels": SERVING_LABELS}}]
        assert sorted(p["port"] for p in inference["ports"]) == [8000, 8001]
        assert [p["port"] for p in metrics["ports"]] == [8002]
        assert _from_namespaces(metrics) == [MONITORING_NAMESPACE]


def test_ingress_example_routes_only_the_api_over_tls() -> None:
    docs = render("ingress-tls")
    (ingress,) = by_kind(docs, "Ingress").values()
    spec = ingress["spec"]
    assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"]
    hosts = [r["host"] for r in spec["rules"]]
    assert sorted(h for t in spec["tls"] for h in t["hosts"]) == sorted(hosts)
    assert all(t["secretName"] for t in spec["tls"])
    services = by_kind(docs, "Service")
    paths = [p for r in spec["rules"] for p in r["http"]["paths"]]
    assert sorted(p["path"] for p in paths) == ["/dicomweb", "/v1"]
    for p in paths:
        assert p["pathType"] == "Prefix"
        backend = p["backend"]["service"]
        assert backend["name"] == "mimicry-serving"
        assert backend["port"]["name"] in {sp["name"] for sp in services["mimicry-serving"]["spec"]["ports"]}
        # A Prefix path matches whole path segments: none of the internal routes is under it.
        for route in (*PROBE_ROUTES, "/docs.json", "/"):
            assert route != p["path"], (p, route)
            assert not route.startswith(p["path"].rstrip("/") + "/"), (p, route)
    # The body-size limit of the controller is the service's own limit.
    serve = yaml.safe_load((K8S / "base" / "config" / "serve.yaml").read_text())
    size = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m")
    assert int(size[:-1]) * 2**20 == serve["max_request_bytes"]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=OVERLAY_IDS)
def test_every_probe_has_a_timeout_of_at_least_two_seconds(overlay: str) -> None:
    pods = _pod_specs(render(overlay))
    seen = 0
    for name, pod in pods.items():
        for c in pod["containers"]:
            for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
                if kind in c:
                    assert c[kind].get("timeoutSeconds", 1) >= 2, (name, kind)  # the Kubernetes default is 1
                    seen += 1
    assert seen >= 5


def test_example_secrets_match_every_secret_reference_and_hold_placeholders(tmp_path: Path) -> None:
    path = EXAMPLES / "secrets.example.yaml"
    proc = run([tool("kubernetes-validate"), "--strict", "--quiet", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(path.read_text()) if d}
    refs = set()
    for overlay in OVERLAYS:
        for pod in _pod_specs(render(overlay)).values():
            for c in pod["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        refs.add((ref["name"], ref["key"]))
                        assert ref.get("optional") is False, ref
    assert refs == {("mimicry-api-token", "token"), ("mimicry-uid-secret", "uid-secret")}
    for name, key in refs:
        value = secrets[name]["stringData"][key]
        assert value.startswith("REPLACE_ME"), (name, key)
    # No kustomization pulls the example in.
    for k in K8S.rglob("kustomization.yaml"):
        assert "examples" not in k.read_text().split("resources:")[-1], k


def test_example_device_plugin_config_validates() -> None:
    proc = run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(EXAMPLES / "nvidia-time-slicing.yaml")]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _adapter_query(rule: dict, namespace: str, pods: list[str]) -> str:
    """The adapter's metricsQuery for the HPA's request (its Go template filled as the adapter does)."""
    series = rule["seriesQuery"].split("{", 1)[0]
    matchers = f'namespace="{namespace}",pod=~"{"|".join(pods)}"'
    return (
        rule["metricsQuery"]
        .replace("<<.Series>>", series)
        .replace("<<.LabelMatchers>>", matchers)
        .replace("<<.GroupBy>>", "pod")
    )


def test_adapter_rules_compute_the_hpa_metrics_per_pod(tmp_path: Path) -> None:
    """promtool evaluates each adapter query on example series: per-pod API requests in flight without the
    probes (whatever their endpoint form), and per-pod Triton queue length over all models."""
    rules = _adapter_rules()
    used = {m for o in OVERLAYS for h in by_kind(render(o), "HorizontalPodAutoscaler").values()
            for m, _ in _hpa_pod_metrics(h)}  # fmt: skip
    assert used == set(rules)
    catalogue = metric_catalogue()
    for rule in rules.values():
        assert rule["seriesQuery"].split("{", 1)[0] in catalogue
        assert rule["resources"]["overrides"] == {
            "namespace": {"resource": "namespace"},
            "pod": {"resource": "pod"},
        }
    inflight = "bentoml_service_request_in_progress"
    series = []
    for pod, values in (("svc-a", {"/v1/predict": 3, "/dicomweb/studies/{study}": 2, "/readyz": 1}),
                        ("svc-b", {"/v1/predict": 1, "/livez": 1, "/metrics": 1})):  # fmt: skip
        for worker, (endpoint, n) in enumerate(values.items()):
            labels = f'namespace="mimicry", pod="{pod}", pid="{worker}", endpoint="{endpoint}"'
            series.append({"series": f"{inflight}{{{labels}}}", "values": f"{n}x5"})
    series.append(
        {"series": f'{inflight}{{namespace="other", pod="svc-a", endpoint="/v1/predict"}}', "values": "9x5"}
    )
    for pod, model, n in (("triton-a", "cxr-ee", 4), ("triton-a", "cxr-base", 2), ("triton-b", "cxr-ee", 0)):
        labels = f'namespace="mimicry", pod="{pod}", model="{model}", version="1"'
        series.append({"series": f"nv_inference_pending_request_count{{{labels}}}", "values": f"{n}x5"})
    cases = [
        {
            "expr": _adapter_query(rules["mimicry_api_requests_in_flight"], "mimicry", ["svc-a", "svc-b"]),
            "eval_time": "2m",
            "exp_samples": [{"labels": '{pod="svc-a"}', "value": 5}, {"labels": '{pod="svc-b"}', "value": 1}],
        },
        {
            "expr": _adapter_query(
                rules["mimicry_triton_pending_requests"], "mimicry", ["triton-a", "triton-b"]
            ),
            "eval_time": "2m",
            "exp_samples": [
                {"labels": '{pod="triton-a"}', "value": 6},
                {"labels": '{pod="triton-b"}', "value": 0},
            ],
        },
    ]
    (tmp_path / "none.rules.yml").write_text("groups: []\n")
    spec = {
        "rule_files": ["none.rules.yml"],
        "tests": [{"interval": "1m", "input_series": series, "promql_expr_test": cases}],
    }
    (tmp_path / "adapter.test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    proc = run([tool("promtool"), "test", "rules", "adapter.test.yml"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_serving_servicemonitor_restores_bentomls_endpoint_label() -> None:
    """The operator's target label `endpoint` (port name) shadows BentoML's route label, which Prometheus
    renames `exported_endpoint`; the ServiceMonitor copies it back so the rules' selectors see routes."""
    (sm,) = [
        d
        for d in render("gpu")
        if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == "mimicry-serving"
    ]
    (endpoint,) = sm["spec"]["endpoints"]
    copy_back, drop = endpoint["metricRelabelings"]
    assert copy_back["sourceLabels"] == ["exported_endpoint"]
    assert copy_back["targetLabel"] == "endpoint"
    assert copy_back["action"] == "replace"
    assert copy_back["regex"] == "(.+)"
    assert (drop["action"], drop["regex"]) == ("labeldrop", "exported_endpoint")
