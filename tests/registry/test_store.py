"""Registry: layout, publishing (atomic, immutable, concurrent), integrity, twin loading, references."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from captum.attr import LayerGradCam
from safetensors.torch import load_file

from mimicry import __version__
from mimicry.models import zoo
from mimicry.models.toy import ToyCamNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import (
    INTENDED_USE,
    CardError,
    ExportParityError,
    IncompatibleVersionError,
    IntegrityError,
    InvalidReferenceError,
    ModelCard,
    ModelNotFoundError,
    ModelRef,
    PublishError,
    Registry,
    TritonConfig,
    UncertaintySpec,
    export_model,
)
from mimicry.registry import store as store_module
from mimicry_cli.commands import registry as registry_commands
from tests.registry import SIZE, TOY_KWARGS, held_batch, publish_toy, toy_export, toy_model

NUMERIC = re.compile(r"^[1-9][0-9]*$")  # Triton's rule for version directories


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------- publish


def test_publish_end_to_end_layout_and_card(tmp_path: Path) -> None:
    model = toy_model()
    reg = Registry(tmp_path / "registry")
    before = datetime.now(UTC)
    card = reg.publish(
        model,
        name="cxr-toy",
        held_batch=held_batch(3),
        preprocessing=PreprocessSpec(size=SIZE, mean=0.3, std=0.2),
        arch_kwargs=TOY_KWARGS,
        training_config={"lr": 0.003, "epochs": 2},
        seed=7,
        replicate_group="toy-recipe-a",
        dataset_fingerprint="sha256:" + "ab" * 32,
        metrics={"accuracy": 0.75, "kld": float("nan")},
        uncertainty=UncertaintySpec(abstain_threshold=0.9),
        extra={"note": "unit test"},
    )
    root = tmp_path / "registry"
    assert sorted(p.name for p in (root / "cxr-toy").iterdir()) == ["1", "config.pbtxt"]
    vdir = root / "cxr-toy" / "1"
    assert sorted(p.name for p in vdir.iterdir()) == ["card.json", "model.onnx", "weights.safetensors"]
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == ["cxr-toy"]

    on_disk = ModelCard.model_validate_json((vdir / "card.json").read_bytes())
    assert on_disk == card
    assert card.schema_version == 1
    assert (card.name, card.version, card.ref) == ("cxr-toy", 1, "cxr-toy:1")
    assert (card.architecture, card.arch_kwargs, card.cam_layer) == ("toy", {"width": 8}, "block3")
    assert card.class_names == ["Normal", "CHF", "pneumonia"]
    assert card.preprocessing == PreprocessSpec(size=SIZE, mean=0.3, std=0.2)
    assert card.black_level == pytest.approx(-1.5)
    assert (card.training_config, card.seed, card.replicate_group) == (
        {"lr": 0.003, "epochs": 2},
        7,
        "toy-recipe-a",
    )
    assert card.dataset_fingerprint == "sha256:" + "ab" * 32
    assert card.metrics == {"accuracy": 0.75, "kld": None}  # NaN stored as null: strict JSON
    assert card.artifacts == {
        "model.onnx": _sha(vdir / "model.onnx"),
        "weights.safetensors": _sha(vdir / "weights.safetensors"),
    }
    assert before <= card.created_at <= datetime.now(UTC)
    assert card.code_version.mimicry == __version__
    assert card.code_version.torch == torch.__version__
    assert card.intended_use == INTENDED_USE == "research use; not for clinical decisions"
    assert card.uncertainty == UncertaintySpec(abstain_threshold=0.9)
    assert card.extra == {"note": "unit test"}
    assert card.onnx is not None
    assert (card.onnx.exporter, card.onnx.opset) == ("dynamo", 18)
    assert card.parity is not None
    assert card.parity.twin_max_abs_diff == 0.0
    assert card.parity.batch_sizes == [1, 3]
    json.loads((vdir / "card.json").read_text())  # strict JSON (no NaN)
    assert "NaN" not in (vdir / "card.json").read_text()


def test_versions_are_allocated_1_2_3(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    cards = [publish_toy(reg) for _ in range(3)]
    assert [c.version for c in cards] == [1, 2, 3]  # type: ignore[attr-defined]
    assert reg.versions("cxr-toy") == [1, 2, 3]
    assert reg.resolve("cxr-toy") == ("cxr-toy", 3)
    assert reg.resolve("cxr-toy:2") == ("cxr-toy", 2)
    assert reg.models() == ["cxr-toy"]
    for v in (1, 2, 3):
        assert reg.card(f"cxr-toy:{v}").version == v


def test_publish_never_overwrites_an_existing_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    original = {p.name: p.read_bytes() for p in (tmp_path / "cxr-toy" / "1").iterdir()}
    # Simulate a stale view of the versions: allocation would pick 1 again.
    monkeypatch.setattr(Registry, "_versions", staticmethod(lambda _d: []))
    with pytest.raises(PublishError, match="already exists; versions are immutable"):
        publish_toy(reg)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "cxr-toy" / "1").iterdir()} == original
    assert [p.name for p in (tmp_path / "cxr-toy").iterdir() if p.name.startswith(".publish-")] == []
    assert reg.versions("cxr-toy") == [1]


def test_leftover_staging_dir_is_ignored(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    crashed = tmp_path / "cxr-toy" / ".publish-crashed"
    crashed.mkdir()
    (crashed / "model.onnx").write_bytes(b"partial")
    assert not NUMERIC.match(crashed.name)  # Triton ignores non-numeric version directories
    assert reg.versions("cxr-toy") == [1]
    assert reg.resolve("cxr-toy") == ("cxr-toy", 1)
    assert [s.versions for s in reg.list()] == [[1]]
    assert publish_toy(reg).version == 2  # type: ignore[attr-defined]
    report = reg.verify()
    assert report.ok
    assert report.warnings == ["cxr-toy: leftover staging directories ['.publish-crashed'] (ignored)"]
    # a model directory holding only a crashed staging dir is not a model
    (tmp_path / "other" / ".publish-x").mkdir(parents=True)
    assert reg.models() == ["cxr-toy"]


def test_failed_publish_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_card: ModelCard) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(store_module, "seal_card", boom)
    reg = Registry(tmp_path)
    with pytest.raises(OSError, match="disk full"):
        publish_toy(reg)
    assert sorted(p.name for p in (tmp_path / "cxr-toy").iterdir()) == []  # no config, version or staging
    assert reg.models() == []


def test_concurrent_publishers_get_distinct_versions(tmp_path: Path) -> None:
    toy_export()  # warm the cache outside the threads
    reg = Registry(tmp_path)
    results: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(publish_toy(Registry(tmp_path)).version)  # type: ignore[attr-defined]
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(results) == [1, 2, 3, 4, 5, 6]
    assert reg.versions("cxr-toy") == [1, 2, 3, 4, 5, 6]
    assert all(reg.card(f"cxr-toy:{v}").version == v for v in range(1, 7))
    assert reg.verify("cxr-toy").ok


def test_triton_settings_go_into_a_new_models_config(tmp_path: Path) -> None:
    reg = Registry(tmp_path, triton=TritonConfig(max_batch_size=4, preferred_batch_size=[2, 4]))
    publish_toy(reg)
    cfg = reg.config("cxr-toy")
    assert cfg.max_batch_size == 4
    assert cfg.version_policy == "all"
    assert cfg.signature() == {"image": (1, 32, 32), "logits": (3,), "probs": (3,), "cam": (3, 8, 8)}
    assert cfg.class_names == ("Normal", "CHF", "pneumonia")


def test_incompatible_second_version_is_refused(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    config_before = (tmp_path / "cxr-toy" / "config.pbtxt").read_bytes()
    model = toy_model()
    bigger = export_model(model, held_batch(2, size=48), exporter="torchscript")
    with pytest.raises(
        IncompatibleVersionError, match=r"input size: image dims \[1, 32, 32\] != new \[1, 48, 48\]"
    ):
        reg.publish_exported(
            bigger,
            name="cxr-toy",
            preprocessing=PreprocessSpec(size=48),
            architecture="toy",
            arch_kwargs=TOY_KWARGS,
        )
    renamed = ToyCamNet(class_names=("a", "b", "c"))
    renamed.load_state_dict(model.state_dict())
    other_names = export_model(renamed, held_batch(2), exporter="torchscript")
    with pytest.raises(IncompatibleVersionError, match="class names"):
        reg.publish_exported(
            other_names,
            name="cxr-toy",
            preprocessing=PreprocessSpec(size=SIZE),
            architecture="toy",
            arch_kwargs={"width": 8, "class_names": ["a", "b", "c"]},
        )
    assert sorted(p.name for p in (tmp_path / "cxr-toy").iterdir()) == ["1", "config.pbtxt"]
    assert (tmp_path / "cxr-toy" / "config.pbtxt").read_bytes() == config_before
    # the same export is fine under another name
    card = reg.publish_exported(
        bigger,
        name="cxr-toy-48",
        preprocessing=PreprocessSpec(size=48),
        architecture="toy",
        arch_kwargs=TOY_KWARGS,
    )
    assert card.ref == "cxr-toy-48:1"


def test_publish_argument_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = Registry(tmp_path)
    _, _, result = toy_export()
    spec = PreprocessSpec(size=SIZE)
    with pytest.raises(PublishError, match="unknown architecture 'nope'"):
        reg.publish_exported(result, name="m", preprocessing=spec, architecture="nope")
    with pytest.raises(PublishError, match="does not rebuild the model's weights"):
        reg.publish_exported(
            result, name="m", preprocessing=spec, architecture="toy", arch_kwargs={"width": 4}
        )
    with pytest.raises(PublishError, match="arch_kwargs must be JSON-serialisable"):
        reg.publish_exported(
            result, name="m", preprocessing=spec, architecture="toy", arch_kwargs={"w": object()}
        )
    with pytest.raises(PublishError, match="preprocessing size 64"):
        reg.publish_exported(result, name="m", preprocessing=PreprocessSpec(size=64), architecture="toy")
    with pytest.raises(InvalidReferenceError, match="invalid model name"):
        reg.publish_exported(result, name="../m", preprocessing=spec, architecture="toy")
    with pytest.raises(PublishError, match="invalid model card fields"):
        reg.publish_exported(result, name="m", preprocessing=spec, architecture="toy", metrics={"a": "high"})
    with pytest.raises(PublishError, match="does not match the preprocessing size 64"):
        reg.publish(toy_model(), name="m", held_batch=held_batch(2), preprocessing=PreprocessSpec(size=64))

    class Unregistered(ToyCamNet):
        pass

    with pytest.raises(PublishError, match="not registered"):
        reg.publish(Unregistered(), name="m", held_batch=held_batch(2), preprocessing=spec)

    # same state_dict layout, different computation: the twin check catches it
    class Doubled(ToyCamNet):
        def features(self, x: torch.Tensor) -> torch.Tensor:
            return super().features(x) * 2.0

    monkeypatch.setitem(zoo._ARCHITECTURES, "test_doubled", Doubled)
    with pytest.raises(ExportParityError, match="twin") as info:
        reg.publish_exported(
            result, name="m", preprocessing=spec, architecture="test_doubled", arch_kwargs=TOY_KWARGS
        )
    assert info.value.check == "twin"
    assert reg.models() == []
    assert [p.name for p in (tmp_path / "m").iterdir()] == []


# ---------------------------------------------------------------------------------------------- loading


def test_twin_from_safetensors_alone_reproduces_torch(tmp_path: Path) -> None:
    """Build from card.json + load_file, no registry code: same predictions and Grad-CAM as the source."""
    model, _, _ = toy_export()
    reg = Registry(tmp_path)
    publish_toy(reg)
    vdir = tmp_path / "cxr-toy" / "1"
    card = json.loads((vdir / "card.json").read_text())
    twin = zoo.build_model(card["architecture"], **card["arch_kwargs"])
    twin.load_state_dict(load_file(vdir / "weights.safetensors"), strict=True)
    twin.eval()
    x = held_batch(5, seed=42)
    with torch.no_grad():
        for a, b in zip(twin.forward_with_cam(x), model.forward_with_cam(x), strict=True):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    gc_twin = LayerGradCam(twin, twin.cam_layer).attribute(x, target=1, relu_attributions=True)
    gc_src = LayerGradCam(model, model.cam_layer).attribute(x, target=1, relu_attributions=True)
    torch.testing.assert_close(gc_twin, gc_src, atol=0, rtol=0)


def test_load_twin_sets_card_fields(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _, _, result = toy_export()
    reg.publish_exported(
        result,
        name="cxr-toy",
        preprocessing=PreprocessSpec(size=SIZE, mean=0.3, std=0.2),
        architecture="toy",
        arch_kwargs=TOY_KWARGS,
    )
    twin = reg.load_twin("cxr-toy:1")
    assert isinstance(twin, ToyCamNet)
    assert not twin.training
    assert twin.class_names == ("Normal", "CHF", "pneumonia")
    assert twin.black_level == pytest.approx(-1.5)
    x = torch.from_numpy(result.reference_input)
    with torch.no_grad():
        np.testing.assert_array_equal(twin.forward_with_cam(x)[2].numpy(), result.reference_outputs["cam"])


def test_onnx_from_registry_path_with_onnxruntime_alone(tmp_path: Path) -> None:
    model, _, _ = toy_export()
    reg = Registry(tmp_path)
    publish_toy(reg)
    path = reg.load_onnx_path("cxr-toy")
    assert path == tmp_path / "cxr-toy" / "1" / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 5):
        x = held_batch(n, seed=50 + n)
        logits, probs, cam = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            ref = model(x)
        np.testing.assert_allclose(probs, torch.softmax(ref, 1).numpy(), atol=1e-5, rtol=0)
        gc = LayerGradCam(model, model.cam_layer)
        for c in range(3):
            expected = gc.attribute(x, target=c, relu_attributions=True).detach()[:, 0].numpy()
            np.testing.assert_allclose(cam[:, c], expected, atol=1e-5, rtol=0)
        assert logits.shape == (n, 3)


def _flip_byte(path: Path, where: str) -> None:
    data = bytearray(path.read_bytes())
    i = {"first": 0, "middle": len(data) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("where", ["first", "middle", "last"])
@pytest.mark.parametrize("artifact", ["model.onnx", "weights.safetensors", "card.json"])
def test_tampering_any_byte_raises_integrity_error_naming_it(
    tmp_path: Path, artifact: str, where: str
) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    publish_toy(reg)
    _flip_byte(tmp_path / "cxr-toy" / "1" / artifact, where)
    for load in (reg.load_onnx_path, reg.load_twin):
        with pytest.raises(IntegrityError, match=f"cxr-toy:1: artifact {re.escape(artifact)}") as info:
            load("cxr-toy:1")
        assert (info.value.artifact, info.value.ref) == (artifact, "cxr-toy:1")
    if artifact == "card.json":
        with pytest.raises(IntegrityError):
            reg.card("cxr-toy:1")
    else:
        assert reg.card("cxr-toy:1").version == 1  # card() hashes only the card
    report = reg.verify()
    assert not report.ok
    assert [c.version for c in report.checks if not c.ok] == [1]
    assert artifact in report.checks[0].problems[0]
    reg.load_twin("cxr-toy:2")  # the other version is untouched


def test_missing_artifact_is_an_integrity_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    (tmp_path / "cxr-toy" / "1" / "weights.safetensors").unlink()
    with pytest.raises(IntegrityError, match=r"weights\.safetensors is missing") as info:
        reg.load_twin("cxr-toy")
    assert info.value.artifact == "weights.safetensors"


def test_card_that_no_longer_rebuilds_is_a_card_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    monkeypatch.delitem(zoo._ARCHITECTURES, "toy")
    with pytest.raises(CardError, match="cannot rebuild the twin"):
        reg.load_twin("cxr-toy")


def test_verify_checks_config_against_cards(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg)
    assert reg.verify().ok
    cfg = tmp_path / "cxr-toy" / "config.pbtxt"
    cfg.write_text(cfg.read_text().replace("dims: [ 3, 8, 8 ]", "dims: [ 3, 4, 4 ]"))
    report = reg.verify("cxr-toy:1")
    assert not report.ok
    assert "cam grid: cam dims [3, 4, 4] != new [3, 8, 8]" in report.checks[0].problems[0]
    cfg.write_text(
        cfg.read_text().replace(
            "version_policy: { all { } }", "version_policy: { latest { num_versions: 1 } }"
        )
    )
    assert "version_policy must be 'all'" in reg.verify().checks[0].problems[0]
    cfg.write_text("name: {")
    report = reg.verify()
    assert "config.pbtxt is invalid" in report.checks[0].problems[0]
    with pytest.raises(IntegrityError) as info:
        reg.config("cxr-toy")
    assert info.value.artifact == "config.pbtxt"


def test_empty_or_missing_registry(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "absent")
    assert reg.models() == []
    assert reg.list() == []
    assert reg.verify().ok
    with pytest.raises(ModelNotFoundError, match="no model 'x'"):
        reg.versions("x")
    with pytest.raises(ModelNotFoundError):
        reg.resolve("x@production")


def test_list_summaries(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    publish_toy(reg, name="b-model")
    publish_toy(reg, name="a-model")
    publish_toy(reg, name="a-model")
    reg.set_alias("a-model", "production", 1)
    rows = reg.list()
    assert [(r.name, r.versions, r.aliases, r.latest, r.architecture) for r in rows] == [
        ("a-model", [1, 2], {"production": 1}, 2, "toy"),
        ("b-model", [1], {}, 1, "toy"),
    ]
    assert all(
        r.created_at is not None and datetime.now(UTC) - r.created_at < timedelta(minutes=5) for r in rows
    )


# ---------------------------------------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cxr-ee", ModelRef("cxr-ee")),
        ("cxr-ee:3", ModelRef("cxr-ee", version=3)),
        ("cxr-ee:12", ModelRef("cxr-ee", version=12)),
        ("cxr-ee@production", ModelRef("cxr-ee", alias="production")),
        ("a.b_c-1@cand_2", ModelRef("a.b_c-1", alias="cand_2")),
        ("7", ModelRef("7")),
    ],
)
def test_model_ref_parse_good(text: str, expected: ModelRef) -> None:
    ref = ModelRef.parse(text)
    assert ref == expected
    assert str(ref) == text
    assert ModelRef.parse(ref) is ref


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cxr:",
        "cxr:0",
        "cxr:01",
        "cxr:-1",
        "cxr:1.5",
        "cxr@",
        "cxr@1",
        "cxr@-x",
        "cxr:1@prod",
        "cxr:1:2",
        "../cxr",
        ".hidden",
        "a/b",
        "cxr ee",
        " cxr",
        "x" * 129,
    ],
)
def test_model_ref_parse_bad(text: str) -> None:
    with pytest.raises(InvalidReferenceError, match="invalid model reference"):
        ModelRef.parse(text)


def test_model_ref_parse_rejects_non_strings() -> None:
    with pytest.raises(InvalidReferenceError, match="must be a string"):
        ModelRef.parse(3)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- no pickle


REGISTRY_SOURCES = [
    *sorted((Path(store_module.__file__).parent).glob("*.py")),
    Path(zoo.__file__),
    Path(registry_commands.__file__),
]


PICKLING_MODULES = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}


def _pickle_uses(source: str) -> list[str]:
    """Code (not docstrings) that imports a pickling module or calls ``torch.load`` / ``torch.save``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in PICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLING_MODULES:
            found.append(f"from {node.module}")
        elif isinstance(node, ast.ImportFrom) and node.module == "torch":
            found += [f"torch.{a.name}" for a in node.names if a.name in ("load", "save")]
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in ("load", "save")
            and isinstance(node.value, ast.Name)
            and node.value.id == "torch"
        ):
            found.append(f"torch.{node.attr}")
    return found


def test_pickle_scanner_detects_uses() -> None:
    source = (
        "import pickle\nfrom dill import loads\nimport torch\nx = torch.load('f')\nfrom torch import save\n"
    )
    assert sorted(_pickle_uses(source)) == ["from dill", "pickle", "torch.load", "torch.save"]
    assert _pickle_uses('"""never torch.load / pickle"""\nfrom safetensors.torch import load_file\n') == []


@pytest.mark.parametrize("path", REGISTRY_SOURCES, ids=lambda p: p.name)
def test_no_pickle_or_torch_load_in_registry_code(path: Path) -> None:
    assert _pickle_uses(path.read_text()) == []


def test_loading_never_unpickles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("pickle used")

    reg = Registry(tmp_path)
    publish_toy(reg)
    monkeypatch.setattr(torch, "load", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "Unpickler", forbidden)
    assert isinstance(reg.load_twin("cxr-toy"), ToyCamNet)
    assert reg.load_onnx_path("cxr-toy").is_file()
    assert reg.verify().ok


def test_list_keeps_a_model_with_an_unreadable_card_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.registry import publish_toy

    reg = Registry(tmp_path / "registry")
    card = publish_toy(reg, name="m")
    (reg.version_dir("m", card.version) / "card.json").write_text("{not json")
    with caplog.at_level("WARNING", logger="mimicry.registry.store"):
        rows = reg.list()
    assert [r.name for r in rows] == ["m"]
    assert rows[0].architecture is None
    assert "card unreadable" in caplog.text
