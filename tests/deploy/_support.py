"""Helpers of the offline deployment checks (docs/deploy.md, "Offline checks"): tool lookup, kustomize
rendering, Dockerfile parsing, metric catalogue.

The metric catalogue is collected from the code that exports the metrics, never typed by hand:
``serving/metrics.py`` and ``audit/prometheus.py`` (parsed with :mod:`ast`: every ``Counter`` / ``Gauge`` /
``Histogram`` / ``Summary`` constructed with a literal name) and BentoML's own request metrics (the same
parse of the installed ``bentoml`` HTTP instruments and ``_bentoml_impl`` server app, with the metric
namespace from BentoML's default configuration). Triton's metrics live in its C++ core: their names are read
from the ``libtritonserver`` shipped by ``nvidia-pytriton``.
"""

from __future__ import annotations

import ast
import importlib.util
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu", "ingress-tls")
#: Overlays that run Triton on GPUs (ingress-tls is the gpu overlay plus an Ingress).
GPU_OVERLAYS = ("gpu", "ingress-tls")
#: Test ids of the overlays (a bare "gpu" id would be read as the `gpu` marker by tests/conftest.py).
OVERLAY_IDS = tuple(f"overlay-{o}" for o in OVERLAYS)
VENV_BIN = ROOT / ".venv" / "bin"

#: Series every Prometheus / Pushgateway exposes without any code of ours.
BUILTIN_SERIES = frozenset({"up", "push_time_seconds", "push_failure_time_seconds"})

#: Triton metrics the dashboard and rules may use (checked against libtritonserver by the tests).
TRITON_METRICS = frozenset(
    {
        "nv_inference_request_failure",
        "nv_inference_request_duration_us",
        "nv_inference_compute_infer_duration_us",
        "nv_inference_pending_request_count",
        "nv_gpu_utilization",
        "nv_cpu_utilization",
    }
)


def tool(name: str) -> str:
    """Path of a command-line tool (the venv's first); a missing tool FAILS the test, naming it.

    The README test command installs every tool these checks use (venv: hadolint, kubernetes-validate;
    Debian: promtool via scripts/system-deps.sh; kubectl ships with the machine image), so a missing one is a
    broken environment, never a reason to skip a check silently.
    """
    venv = VENV_BIN / name
    if venv.is_file():
        return str(venv)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (see docs/deploy.md, 'Offline checks')")
    return found


def run(args: list[str], *, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=cwd or ROOT, input=stdin, capture_output=True, text=True, timeout=120, check=False
    )


@cache
def render(overlay: str) -> tuple[dict, ...]:
    """``kubectl kustomize deploy/k8s/overlays/<overlay>`` as a tuple of resource dicts."""
    proc = run([tool("kubectl"), "kustomize", str(K8S / "overlays" / overlay)])
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def dockerfile_instructions(path: Path | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (path or ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        s = line.strip()
        if s and not s.startswith("#"):
            word, _, rest = s.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def dockerfile_stages(path: Path | None = None) -> dict[str, list[tuple[str, str]]]:
    """The instructions of each build stage, by stage name (``FROM … AS name``)."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current = None
    for ins, args in dockerfile_instructions(path):
        if ins == "FROM":
            current = args.split(" AS ")[-1].strip() if " AS " in args else args
            stages[current] = []
        elif current is not None:
            stages[current].append((ins, args))
    return stages


def owned_directories(stage: list[tuple[str, str]]) -> dict[str, str]:
    """Directories a stage creates with ``install -d -o UID -g GID [-m MODE] DIR…``: {dir: "UID:GID"}."""
    out: dict[str, str] = {}
    for ins, args in stage:
        if ins != "RUN":
            continue
        for cmd in re.split(r"&&|;", args):
            words = cmd.split()
            if words[:2] != ["install", "-d"]:
                continue
            opts, rest = {}, words[2:]
            while rest and rest[0] in ("-o", "-g", "-m"):
                opts[rest[0]] = rest[1]
                rest = rest[2:]
            for d in rest:
                out[d.rstrip("/")] = f"{opts.get('-o', '0')}:{opts.get('-g', '0')}"
    return out


def by_kind(docs: tuple[dict, ...], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


# ------------------------------------------------------------------------------------------ metric names
_CTORS = {"Counter", "Gauge", "Histogram", "Summary", "Info", "Enum"}


def _exported(kind: str, name: str) -> set[str]:
    """The series names a prometheus_client metric exposes (``_total`` is appended to counters)."""
    base = name.removesuffix("_total") if kind == "Counter" else name
    return {
        "Counter": {f"{base}_total", f"{base}_created"},
        "Gauge": {base},
        "Histogram": {f"{base}_bucket", f"{base}_sum", f"{base}_count", f"{base}_created"},
        "Summary": {base, f"{base}_sum", f"{base}_count", f"{base}_created"},
        "Info": {f"{base}_info"},
        "Enum": {base},
    }[kind]


def metrics_in_source(path: Path, namespace: str | None = None) -> set[str]:
    """Exposed series names of every metric constructed in a Python file with a literal name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        kind = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if kind not in _CTORS:
            continue
        kw = {k.arg: k.value for k in node.keywords}
        name_node = node.args[0] if node.args else kw.get("name")
        if not (isinstance(name_node, ast.Constant) and isinstance(name_node.value, str)):
            continue
        name = name_node.value
        ns = kw.get("namespace")
        if ns is not None:
            prefix = ns.value if isinstance(ns, ast.Constant) else namespace
            if prefix:
                name = f"{prefix}_{name}"
        names |= _exported(kind, name)
    return names


def _package_file(package: str, relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    assert spec is not None, f"{package} is not installed"
    assert spec.origin is not None, f"{package} has no file"
    return Path(spec.origin).parent / relative


@cache
def bentoml_metrics() -> frozenset[str]:
    """BentoML 1.4's request and batching metrics under its configured namespace (``bentoml_service``)."""
    config = yaml.safe_load(
        _package_file("bentoml", "_internal/configuration/v2/default_configuration.yaml").read_text()
    )
    namespace = config["services"]["metrics"]["namespace"]
    names = metrics_in_source(_package_file("bentoml", "_internal/server/http/instruments.py"), namespace)
    names |= metrics_in_source(_package_file("_bentoml_impl", "server/app.py"), namespace)
    return frozenset(n for n in names if n.startswith(namespace + "_"))


@cache
def metric_catalogue() -> frozenset[str]:
    """Every series name the project's processes export (service, audit, BentoML, Triton, built-ins)."""
    ours = metrics_in_source(ROOT / "serving" / "metrics.py") | metrics_in_source(
        ROOT / "audit" / "prometheus.py"
    )
    return frozenset(ours) | bentoml_metrics() | TRITON_METRICS | BUILTIN_SERIES


_PROMQL_WORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "offset",
        "bool",
        "and",
        "or",
        "unless",
        "inf",
        "nan",
        "atan2",
    }
)


def promql_metrics(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (Grafana ``$variables`` allowed).

    Strips string literals, label matchers ``{…}``, range / offset durations ``[…]``, grouping clauses
    ``by (…)`` / ``without (…)`` / ``on (…)`` / ``ignoring (…)`` / ``group_left (…)``, function calls
    (an identifier followed by ``(``), keywords and numbers; what is left are metric names.
    """
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\boffset\s+\w+", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word in _PROMQL_WORDS or re.fullmatch(r"\d+[a-z]*", word):
            continue
        names.add(word)
    return names
