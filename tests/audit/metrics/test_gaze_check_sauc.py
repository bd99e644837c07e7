"""sAUC in the gaze check: the shuffled-fixation pool read from a reference store's fixation table (no image
decoding) places every fixation where the cases' own fixation maps do, each case's negatives are the other
cases' fixations, and the score is the ROC area scikit-learn computes on those positives and negatives."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from audit.checks import GAZE_METRICS, ShuffledFixations, gaze_alignment, gaze_scores
from audit.reference import ReferenceSet
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.preprocess import PreprocessSpec


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("sauc")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=8, size=48, seed=5))
    ref = ReferenceSet(root / "ref", split=None)
    return ref, [ref.case(i, PreprocessSpec(size=32)) for i in range(len(ref))]


def test_pool_from_the_fixation_table_equals_the_pool_from_the_fixation_maps(cases) -> None:
    ref, cs = cases
    from_table = ShuffledFixations.from_reference(ref)
    from_maps = ShuffledFixations.from_cases(cs)
    assert from_table.keys == from_maps.keys == ref.keys
    assert from_table.fingerprint == from_maps.fingerprint
    for c in cs:
        np.testing.assert_array_equal(from_table.other_map(c), from_maps.other_map(c))
        others = np.zeros(c.shape, bool)
        for o in cs:
            if o is not c:
                others |= o.fixation_map  # same grid for every phantom: no rescaling
        np.testing.assert_array_equal(from_maps.other_map(c), others)
        assert others.any()


def test_gaze_check_reports_sauc_equal_to_sklearn_on_the_pooled_negatives(cases) -> None:
    _, cs = cases
    rng = np.random.default_rng(0)
    maps = [rng.random(c.shape) for c in cs]
    r = gaze_alignment(maps, cs, method="noise")
    assert "sauc" in GAZE_METRICS
    assert set(GAZE_METRICS) == set(r.summaries)
    pool = ShuffledFixations.from_cases(cs)
    for m, c in zip(maps, cs, strict=True):
        other = pool.other_map(c)
        y = np.r_[np.ones(c.fixation_map.sum()), np.zeros(other.sum())]
        v = np.r_[m[c.fixation_map], m[other]]
        assert r.values["sauc"][c.key] == pytest.approx(roc_auc_score(y, v), abs=1e-12)
    # the gaze heatmap itself separates this image's fixations from the others' far better than noise
    oracle = gaze_alignment([c.heatmap for c in cs], cs, method="oracle")
    assert oracle.summaries["sauc"].mean > r.summaries["sauc"].mean + 0.2


def test_sauc_is_nan_without_a_pool(cases) -> None:
    _, cs = cases
    c = cs[0]
    assert np.isnan(gaze_scores(np.ones(c.shape) + np.eye(*c.shape), c)["sauc"])


def test_a_case_missing_from_the_pool_gets_every_pooled_fixation(cases) -> None:
    _, cs = cases
    pool = ShuffledFixations.from_cases(cs[1:])
    expected = np.zeros(cs[0].shape, bool)
    for o in cs[1:]:
        expected |= o.fixation_map
    np.testing.assert_array_equal(pool.other_map(cs[0]), expected)


def test_sauc_and_robustness_reach_prometheus(cases) -> None:
    """The exporter's score gauge carries the new rows like every other metric."""
    from prometheus_client import generate_latest

    from audit.checks import CheckResult, MetricSummary
    from audit.policy import load_policy
    from audit.prometheus import AuditMetrics
    from audit.runner import AuditReport, ModelAudit

    _, cs = cases
    gaze = gaze_alignment([c.heatmap for c in cs], cs, method="gradcam")
    rob = CheckResult("robustness", "gradcam")
    rob.summaries["max_sensitivity"] = MetricSummary(0.125, 0.125, 0.0, 0.1, 0.2, 4)
    m = ModelAudit("cxr", 3, "ab" * 32, "toy", ["gradcam"], results=[gaze, rob])
    metrics = AuditMetrics()
    metrics.observe(AuditReport({}, load_policy(None), [m], [], started=0.0, finished=1.0))
    text = generate_latest(metrics.registry).decode()
    sauc_line = next(ln for ln in text.splitlines() if 'check="gaze"' in ln and 'metric="sauc"' in ln)
    assert float(sauc_line.rsplit(" ", 1)[1]) == pytest.approx(gaze.summaries["sauc"].mean)
    assert (
        'mimicry_audit_score{check="robustness",method="gradcam",metric="max_sensitivity",model="cxr",'
        'version="3"} 0.125' in text
    )
