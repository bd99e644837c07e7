"""The runner's boundary (audit.sources, audit.scoring, audit.model_checks): a source's declared capabilities
decide which checks run and which are N/A (with the reason), and every source goes through the same scoring
loop — a served model answering with the twin's own maps gets the twin's per-case scores."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from audit.blackbox import EndpointExplanation, ServedModelInfo
from audit.policy import Policy
from audit.reference import ReferenceCase, ReferenceSet
from audit.runner import AuditConfig, ModelAudit, audit_source
from audit.scoring import AuditContext, Pairs
from audit.sources import (
    Capabilities,
    CaseMap,
    EndpointSource,
    MapSource,
    OcclusionRow,
    TwinSource,
    make_explainer,
)
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec, unletterbox
from mimicry.registry import Registry

SIZE = 32
POLICY = {
    "version": 1,
    "methods": ["gradcam"],
    "pairwise_cases": 4,
    "bootstrap": {"n_resamples": 200},
    "criteria": [
        {"id": "gaze_nss", "group": "Gaze", "label": "NSS", "check": "gaze", "metric": "nss", "op": ">",
         "threshold": -100.0},
        {"id": "faith", "group": "Faithfulness", "label": "DEL", "check": "faithfulness",
         "metric": "deletion_auc", "op": "<", "threshold": 2.0},
        {"id": "rand", "group": "Randomization", "label": "", "check": "cascading_randomisation",
         "metric": "ssim_full", "op": "<", "threshold": 2.0, "gate": False},
    ],
}  # fmt: skip
CHECKS = [
    "gaze", "localisation", "shortcut", "faithfulness", "counterfactual", "cascading_randomisation",
    "random_logit", "robustness", "repeatability", "runtime_reproducibility", "subgroups",
]  # fmt: skip


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuditContext, Registry]]:
    root = tmp_path_factory.mktemp("audit_sources")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=12, size=64, seed=4))
    reg = Registry(root / "registry")
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    reg.publish(
        LeftRightToyNet(scale=40.0).eval(),
        name="lr",
        held_batch=x,
        preprocessing=PreprocessSpec(size=SIZE),
        arch_kwargs={"scale": 40.0},
    )
    policy = Policy.model_validate(POLICY)
    config = AuditConfig(
        registry=root / "registry", models=["lr:1"], reference=root / "ref", policy=policy, checks=CHECKS,
        batch_size=2,
    )  # fmt: skip
    reference = ReferenceSet(
        root / "ref", split=policy.split, limit=policy.max_cases, class_names=reg.card("lr:1").class_names
    )
    context = AuditContext(config, reference)
    yield context, reg
    context.close()


class MapsOnly(MapSource):
    """A source declaring only the capabilities it is given: maps (native grid only) of a twin, and its
    counterfactual rows when it declares ``occlusion``."""

    mode = "maps-only"
    mode_label = "maps-only mode"

    def __init__(self, twin: TwinSource, capabilities: Capabilities) -> None:
        self.twin = twin
        self.identity = twin.identity
        self.capabilities = capabilities

    def open(self, methods: Sequence[str]) -> dict[str, str]:
        failed = super().open(methods)
        self.twin.open([m for m in methods if m not in failed])
        return failed

    def targets(self, cases: Sequence[ReferenceCase]) -> list[int] | None:
        return None

    def explain(self, need, cases, positions, targets):  # type: ignore[no-untyped-def]
        maps = self.twin.explain(need, cases, positions, self.twin.targets(cases))
        return {
            m: got
            if isinstance(got, str)
            else {j: CaseMap(c.target_class, given_native=c.native) for j, c in got.items()}
            for m, got in maps.items()
        }

    def occlusion_rows(self, positions, cases, errors) -> list[OcclusionRow]:  # type: ignore[no-untyped-def]
        return self.twin.occlusion_rows(positions, cases, errors)

    def runtime_parity(self, ctx: AuditContext, pairs: Pairs, k: int) -> None:
        raise AssertionError("not declared, never called")


def _values(audit: ModelAudit, check: str) -> dict[str, dict[str, float]]:
    r = audit.result(check, "gradcam")
    assert r is not None, check
    return r.values


def _same(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]]) -> None:
    assert a.keys() == b.keys()
    for metric, per_case in a.items():
        assert per_case.keys() == b[metric].keys()
        np.testing.assert_allclose(list(per_case.values()), list(b[metric].values()), rtol=0, atol=0)


@pytest.mark.parametrize("occlusion", [False, True])
def test_a_source_gets_exactly_the_checks_its_capabilities_allow(ctx: tuple, occlusion: bool) -> None:
    context, reg = ctx
    white = audit_source(context, TwinSource(context, reg, reg.card("lr:1")))
    assert not white.errors
    assert not white.not_applicable
    # the twin runs everything the policy asks for (repeatability: no partner → no result, not N/A)
    assert {r.check for r in white.results} == set(CHECKS) - {"repeatability"}

    fake = MapsOnly(TwinSource(context, reg, reg.card("lr:1")), Capabilities(occlusion=occlusion))
    audit = audit_source(context, fake)
    assert not audit.errors, audit.errors
    assert audit.mode == "maps-only"
    expected_na = {
        "faithfulness": "needs model forwards on perturbed inputs (maps-only mode)",
        "cascading_randomisation": "needs the model weights (maps-only mode)",
        "random_logit": "needs the model weights (maps-only mode)",
        "robustness": "needs explanations of noise-perturbed inputs (maps-only mode)",
        "repeatability": "needs the model weights (maps-only mode)",
        "runtime_reproducibility": "needs the served version in the registry (maps-only mode)",
    }
    if not occlusion:
        expected_na["counterfactual"] = "needs predictions of edited inputs (maps-only mode)"
    assert audit.not_applicable == expected_na
    ran = {"gaze", "localisation", "shortcut", "subgroups"} | ({"counterfactual"} if occlusion else set())
    assert {r.check for r in audit.results} == ran
    verdicts = {v.criterion: (v.status, v.reason) for v in audit.verdicts}
    assert verdicts["faith"] == ("N/A", "needs model forwards on perturbed inputs (maps-only mode)")
    assert verdicts["rand"] == ("N/A", "needs the model weights (maps-only mode)")
    assert verdicts["gaze_nss"][0] == "PASS", (verdicts, {v.criterion: v for v in white.verdicts})
    # the same maps through the same loop: identical per-case scores, classes and baselines
    for check in ("gaze", "localisation", "shortcut") + (("counterfactual",) if occlusion else ()):
        _same(_values(white, check), _values(audit, check))
        assert audit.result(check, "gradcam").case_class == white.result(check, "gradcam").case_class  # type: ignore[union-attr]
    assert (
        audit.result("localisation", "gradcam").baselines == white.result("localisation", "gradcam").baselines
    )  # type: ignore[union-attr]
    assert (audit.n_cases, audit.n_cached) == (white.n_cases, 0)
    assert white.n_cases == len(context.reference) >= 3


def test_an_undeclared_method_or_foreign_weights_fail_with_a_message(ctx: tuple) -> None:
    context, reg = ctx
    fake = MapsOnly(TwinSource(context, reg, reg.card("lr:1")), Capabilities(methods=frozenset({"saliency"})))
    audit = audit_source(context, fake)
    assert audit.errors == ["method gradcam: not offered by this source"]
    assert audit.result("gaze", "gradcam") is None
    assert not audit.passed
    weights = MapsOnly(TwinSource(context, reg, reg.card("lr:1")), Capabilities(weights=True))
    audit = audit_source(context, weights)  # weights are a torch twin's: a typed error, not a crash
    assert audit.errors == [
        "AuditError: the weights of a maps-only source cannot be audited (only a torch twin's)"
    ]


class TwinBehindHttp:
    """An endpoint client stub: ``/v1/explain`` answers (native grid) computed by the registry's twin from the
    reference DICOM the request carries — the service's answer without the service."""

    url = "http://stub.invalid"

    def __init__(self, context: AuditContext, reg: Registry, sha256: str) -> None:
        self.context = context
        self.card = reg.card("lr:1")
        self.twin = reg.load_twin("lr:1")
        self.sha256 = sha256
        self.position = {context.reference.dicom_bytes(i): i for i in range(len(context.reference))}
        self.requests = 0

    def explain_many(self, requests: Sequence) -> list[EndpointExplanation]:
        out = []
        for req in requests:
            self.requests += 1
            assert (req.space, req.method) == ("source", "gradcam")
            case = self.context.reference.case(self.position[req.dicom], self.card.preprocessing)
            x = torch.from_numpy(case.x[None])
            with torch.no_grad():
                probs = torch.softmax(self.twin(x), dim=1)[0].numpy()
            names = list(self.card.class_names)
            t = int(probs.argmax()) if req.target == "predicted" else names.index(req.target)
            cam = make_explainer("gradcam")(self.twin, x, torch.tensor([t]))[0]
            out.append(
                EndpointExplanation(
                    map=unletterbox(cam, case.letterbox), space="source",
                    probabilities=probs.astype(np.float64),
                    class_names=tuple(self.card.class_names), target_index=t,
                    target_class=self.card.class_names[t], method=req.method,
                    model={"name": "lr", "version": 1, "sha256": self.sha256, "ref": "lr:1"},
                )
            )  # fmt: skip
        return out


def test_the_endpoint_source_scores_the_same_maps_like_the_twin(ctx: tuple) -> None:
    context, reg = ctx
    card = reg.card("lr:1")
    white = audit_source(context, TwinSource(context, reg, card))
    sha = card.artifacts["model.onnx"]
    info = ServedModelInfo("lr", 1, sha, "lr", True, ("gradcam",), tuple(card.class_names), card)
    client = TwinBehindHttp(context, reg, sha)
    source = EndpointSource(context, info, client, None)  # type: ignore[arg-type]
    source.capabilities = Capabilities()  # no /v1/predict in the stub
    black = audit_source(context, source)
    assert not black.errors, black.errors
    assert (black.mode, black.endpoint, black.sha256) == ("blackbox", "http://stub.invalid", sha)
    assert black.not_applicable["cascading_randomisation"] == "needs the model weights (black-box mode)"
    assert black.not_applicable["runtime_reproducibility"] == (
        "needs the served version in the registry (black-box mode)"
    )
    assert client.requests == black.n_cases  # one request per case (no pairwise maps without weights)
    for check in ("gaze", "localisation", "shortcut"):
        _same(_values(white, check), _values(black, check))
    assert [ex["key"] for ex in black.examples] == [ex["key"] for ex in white.examples]
    for eb, ew in zip(black.examples, white.examples, strict=True):
        np.testing.assert_array_equal(eb["maps"]["gradcam"], ew["maps"]["gradcam"])


def test_the_endpoint_declares_runtime_parity_only_with_the_served_version(
    ctx: tuple, tmp_path: Path
) -> None:
    context, reg = ctx
    card = reg.card("lr:1")
    info = ServedModelInfo(
        "lr", 1, card.artifacts["model.onnx"], "lr", True, ("gradcam",), tuple(card.class_names)
    )
    other = ServedModelInfo("lr", 1, "0" * 64, "lr", True, ("gradcam",), tuple(card.class_names))
    assert EndpointSource(context, info, TwinBehindHttp, reg).capabilities.runtime_parity  # type: ignore[arg-type]
    assert not EndpointSource(context, other, TwinBehindHttp, reg).capabilities.runtime_parity  # type: ignore[arg-type]
    assert not EndpointSource(context, info, TwinBehindHttp, None).capabilities.runtime_parity  # type: ignore[arg-type]
    empty = EndpointSource(context, info, TwinBehindHttp, Registry(tmp_path / "empty"))  # type: ignore[arg-type]
    assert not empty.capabilities.runtime_parity
