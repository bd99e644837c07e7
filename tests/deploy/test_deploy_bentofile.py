"""``bentofile.yaml`` (docs/deploy.md, "BentoML"): pins consistent with pyproject / requirements.lock, and a
real ``bentoml build`` into a temporary BENTOML_HOME whose generated Dockerfile, requirements and OpenAPI are
checked (``bentoml containerize`` itself needs a Docker engine: not run here)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from tests.deploy._support import ROOT, tool

BENTOFILE = ROOT / "bentofile.yaml"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[_norm(name)] = version
    return pins


def test_packages_are_pyproject_dependencies_pinned_by_the_lock() -> None:
    bento = yaml.safe_load(BENTOFILE.read_text())
    assert bento["service"] == "serving.service:MimicryService"
    deps = [
        Requirement(d)
        for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    packages = {}
    for spec in bento["python"]["packages"]:
        req = Requirement(spec)
        (pin,) = req.specifier
        assert pin.operator == "==", spec
        packages[_norm(req.name)] = (pin.version, req.extras)
    lock = _lock()
    # onnxruntime-gpu replaces onnxruntime (never both in one environment).
    assert "onnxruntime" not in packages
    expected = {("onnxruntime-gpu" if _norm(d.name) == "onnxruntime" else _norm(d.name)) for d in deps}
    assert set(packages) == expected
    for d in deps:
        name = _norm(d.name)
        version, extras = packages["onnxruntime-gpu" if name == "onnxruntime" else name]
        assert version == lock[name], name
        assert d.specifier.contains(version, prereleases=True), (name, version, str(d.specifier))
        assert extras == d.extras, name
    assert bento["docker"]["python_version"] == "3.11"
    assert bento["docker"]["cuda_version"].startswith("12.")


@pytest.fixture(scope="module")
def built_bento(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("bentoml-home")
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true"}
    proc = subprocess.run(
        [tool("bentoml"), "build", "--output", "tag", str(ROOT)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tag,) = re.findall(r"__tag__:(\S+)", proc.stdout)
    name, version = tag.split(":")
    bento = home / "bentos" / name / version
    assert bento.is_dir()
    return bento


def test_bento_dockerfile_uses_the_cuda_base_and_serves_port_3000(built_bento: Path) -> None:
    dockerfile = (built_bento / "env" / "docker" / "Dockerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", dockerfile, re.M)
    assert froms[0] == "nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04"
    assert re.search(r"^EXPOSE 3000$", dockerfile, re.M)
    assert re.search(r"^USER bentoml$", dockerfile, re.M)  # BentoML's image runs non-root too
    assert "MIMICRY_SERVE_REGISTRY=/models/registry" in dockerfile
    requirements = (built_bento / "env" / "python" / "requirements.txt").read_text().split()
    assert "onnxruntime-gpu==1.31.1" in requirements
    assert not any(r.startswith("onnxruntime==") for r in requirements)
    install = (built_bento / "env" / "python" / "install.sh").read_text()
    assert "--extra-index-url https://download.pytorch.org/whl/cu126" in install


def test_bento_openapi_and_schema_expose_the_service_routes(built_bento: Path) -> None:
    openapi = yaml.safe_load((built_bento / "apis" / "openapi.yaml").read_text())
    assert openapi["openapi"].startswith("3.")
    assert openapi["info"]["title"] == "mimicry"
    assert {"/v1/infer", "/livez", "/readyz", "/healthz", "/metrics"} <= set(openapi["paths"])
    meta = yaml.safe_load((built_bento / "bento.yaml").read_text())
    assert meta["service"] == "serving.service:MimicryService"
    paths = meta["schema"]["paths"]
    assert {"/v1/predict", "/v1/explain", "/v1/models", "/dicomweb/studies"} <= set(paths)
    assert meta["models"] == []  # the registry is mounted, never packed


def test_bento_sources_are_self_contained(built_bento: Path) -> None:
    src = built_bento / "src"
    assert sorted(p.name for p in src.iterdir() if p.is_dir()) == ["mimicry", "serving"]
    assert (src / "mimicry" / "registry" / "__init__.py").is_file()
    assert not list(src.rglob("*.pyc"))
    # The service imports from the bento's own sources (prepended to sys.path, ahead of the editable install).
    code = (
        f"import sys; sys.path.insert(0, {str(src)!r}); import serving.service, mimicry.registry; "
        "print(serving.service.__file__); print(mimicry.registry.__file__)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=src, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(line.startswith(str(src)) for line in proc.stdout.split()), proc.stdout
