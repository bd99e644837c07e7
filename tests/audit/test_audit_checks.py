"""Audit checks on synthetic cases with known answers (audit.checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from audit.checks import (
    CheckResult,
    cascading_randomisation,
    compare_models,
    degradation_threshold,
    gaze_alignment,
    independent_randomisation,
    localisation_utility,
    map_agreement,
    marker_occlusion,
    randomisation_stages,
    replicate_consistency,
    runtime_reproducibility,
    shortcut_mass,
    subgroup_gaps,
    torch_forward,
)
from audit.checks.counterfactual import occlusion_boxes, paint_out, paint_out_dicom
from audit.errors import CheckInputError
from audit.metrics import ssim
from audit.reference import ReferenceCase, case_key
from mimicry.models import LeftRightToyNet, ToyCamNet
from mimicry.preprocess import PreprocessSpec, preprocess
from mimicry.saliency import explain

H = W = 32


def _case(i: int, *, finding: bool = True, groups: dict | None = None) -> ReferenceCase:
    yy, xx = np.mgrid[0:H, 0:W]
    heat = np.exp(-((xx - 8.0) ** 2 + (yy - 16.0) ** 2) / 20.0).astype(np.float32)
    heat /= heat.sum()
    fix = np.zeros((H, W), bool)
    fix[16, 8] = fix[15, 9] = True
    mask = np.zeros((H, W), bool)
    if finding:
        mask[12:20, 4:12] = True
    anatomy = np.zeros((H, W), bool)
    anatomy[4:28, 2:30] = True
    marker = np.zeros((H, W), bool)
    marker[0:5, 27:32] = True
    image = np.random.default_rng(i).random((H, W)).astype(np.float32)
    x, box = preprocess(image, PreprocessSpec(size=H))
    return ReferenceCase(
        key=case_key(f"case-{i}"),
        index=i,
        label_index=0,
        groups=groups or {"gender": "F", "age_bucket": "60-70", "site": "site_a"},
        image=image,
        x=x,
        letterbox=box,
        heatmap=heat,
        fixation_map=fix,
        finding_mask=mask,
        anatomy=anatomy,
        marker=marker,
    )


def test_gaze_alignment_of_the_heatmap_itself_is_perfect() -> None:
    cases = [_case(i) for i in range(3)]
    r = gaze_alignment([c.heatmap / c.heatmap.max() for c in cases], cases, method="oracle")
    assert r.check == "gaze"
    assert r.method == "oracle"
    assert r.summaries["cc"].mean == pytest.approx(1.0, abs=1e-6)
    assert r.summaries["kld"].mean == pytest.approx(0.0, abs=1e-6)
    assert r.summaries["sim"].mean == pytest.approx(1.0, abs=1e-6)
    assert r.summaries["nss"].mean > 2.0
    assert r.summaries["cc"].n == 3
    assert set(r.values["cc"]) == {c.key for c in cases}


def test_gaze_of_an_anti_correlated_map_is_negative() -> None:
    cases = [_case(0), _case(1)]
    r = gaze_alignment([1.0 - c.heatmap / c.heatmap.max() for c in cases], cases, method="anti")
    assert r.summaries["cc"].mean == pytest.approx(-1.0, abs=1e-6)
    assert r.summaries["nss"].mean < 0


def test_localisation_mask_scores_one_and_beats_the_average_mask_baseline() -> None:
    cases = [_case(0), _case(1), _case(2, finding=False)]
    avg = np.full((256, 256), 0.5, np.float32)  # uninformative average mask
    maps = [c.finding_mask.astype(np.float32) for c in cases]
    r = localisation_utility(maps, cases, method="oracle", average_mask=avg)
    assert r.summaries["auprc"].mean == pytest.approx(1.0)
    assert r.summaries["pointing_game"].mean == 1.0
    assert r.summaries["auprc"].n == 2
    assert r.summaries["auprc"].n_dropped == 1
    # A constant map has one threshold: the PR curve is (recall 0, precision 1) → (1, 64/1024), whose
    # trapezoid (Arun et al.'s AUPRC, not average precision) is (1 + 64/1024) / 2.
    assert r.baselines["average_mask"]["auprc"] == pytest.approx((1 + 64 / 1024) / 2)


def test_shortcut_mass_on_the_marker_and_the_uniform_baseline() -> None:
    cases = [_case(0), _case(1)]
    maps = [c.marker.astype(np.float32) for c in cases]
    r = shortcut_mass(maps, cases, method="marker")
    assert r.summaries["marker_mass"].mean == pytest.approx(1.0)
    assert r.summaries["outside_anatomy"].mean == pytest.approx(22 / 25)  # 3 marker pixels overlap anatomy
    assert r.baselines["uniform"]["marker_mass"] == pytest.approx(25 / 1024)
    assert r.baselines["uniform"]["outside_anatomy"] == pytest.approx(1 - 24 * 28 / 1024)


def test_checks_refuse_mismatched_inputs() -> None:
    c = _case(0)
    with pytest.raises(CheckInputError):
        gaze_alignment([np.zeros((8, 8), np.float32)], [c], method="m")
    with pytest.raises(CheckInputError):
        shortcut_mass([], [c], method="m")


def test_randomisation_stages_are_top_down() -> None:
    assert [s.name for s in randomisation_stages(ToyCamNet())] == ["classifier", "block3", "block2", "block1"]
    assert [s.name for s in randomisation_stages(LeftRightToyNet())] == ["classifier", "block2", "block1"]


def _gradcam(model, x, t):
    return explain(model, x, t, "gradcam")


def _image_itself(model, x, t):
    v = x[:, 0].numpy()
    lo = v.reshape(len(v), -1).min(1)[:, None, None]
    hi = v.reshape(len(v), -1).max(1)[:, None, None]
    return ((v - lo) / (hi - lo)).astype(np.float32)


def _inputs(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    x = torch.randn(n, 1, H, W, generator=torch.Generator().manual_seed(3))
    return x, torch.zeros(n, dtype=torch.long), [f"k{i}" for i in range(n)]


def test_cascading_randomisation_fails_a_weight_independent_method() -> None:
    torch.manual_seed(0)
    model = ToyCamNet().eval()
    x, t, keys = _inputs()
    thr = degradation_threshold(_image_itself(model, x, t), n_pairs=50, seed=0)
    r = cascading_randomisation(model, x, t, _image_itself, method="image", keys=keys, threshold=thr)
    assert r.summaries["ssim_full"].mean == pytest.approx(1.0)
    assert thr[0] < 0.5
    assert r.details["stages"] == ["classifier", "block3", "block2", "block1"]
    assert r.details["curve"]["ssim"] == pytest.approx([1.0, 1.0, 1.0, 1.0])
    assert r.baselines["degradation_threshold"]["ssim_full"] == thr[0]


def test_cascading_randomisation_changes_gradcam_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = ToyCamNet().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, t, keys = _inputs()
    r = cascading_randomisation(model, x, t, _gradcam, method="gradcam", keys=keys)
    assert r.summaries["ssim_full"].mean < 0.9
    assert set(r.values) >= {"ssim@classifier", "spearman@block1", "ssim_full", "spearman_full"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    ind = independent_randomisation(model, x, t, _gradcam, method="gradcam", keys=keys)
    # Randomising the head alone is the first cascading stage too.
    assert ind.values["ssim@classifier"] == r.values["ssim@classifier"]
    assert ind.values["ssim_max"]["k0"] == max(ind.values[f"ssim@{s}"]["k0"] for s in ind.details["stages"])


def test_degradation_threshold_pairs_different_images_only() -> None:
    a = np.zeros((H, W), np.float32)
    a[:, :16] = 1
    b = np.zeros((H, W), np.float32)
    b[:16] = 1
    s, _ = degradation_threshold(np.stack([a, b]), n_pairs=50, seed=1)
    assert s == pytest.approx(float(ssim(a, b, data_range=1.0)))
    with pytest.raises(CheckInputError):
        degradation_threshold(a[None])


def test_runtime_reproducibility_twin_vs_itself_and_vs_a_drifted_runtime() -> None:
    model = LeftRightToyNet().eval()
    xs = [np.random.default_rng(i).random((1, H, W)).astype(np.float32) for i in range(3)]
    ref = torch_forward(model)
    r = runtime_reproducibility(ref, ref, xs, [0, 1, 0], ["a", "b", "c"])
    assert r.summaries["probs_max_abs_diff"].max == 0.0
    assert r.summaries["cam_max_abs_diff"].max == 0.0

    def drifted(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p, c = ref(x)
        return p + 0.25, c

    r2 = runtime_reproducibility(ref, drifted, xs, [0, 1, 0], ["a", "b", "c"])
    assert r2.summaries["probs_max_abs_diff"].max == pytest.approx(0.25)


def test_map_agreement_identical_maps_and_low_baseline() -> None:
    maps = [np.random.default_rng(i).random((H, W)).astype(np.float32) for i in range(3)]
    r = map_agreement(maps, maps, ["a", "b", "c"], check="repeatability", method="gradcam", other="m:2")
    assert r.summaries["ssim"].mean == pytest.approx(1.0)
    assert r.baselines["low"] == {"ssim": 0.5}


def test_consistency_separable_maps_score_zero() -> None:
    a = np.zeros((20, H, W), np.float32)
    b = np.zeros((20, H, W), np.float32)
    a[:, :, :16] = 1
    b[:, :, 16:] = 1
    rng = np.random.default_rng(0)
    a += rng.random(a.shape).astype(np.float32) * 0.1
    b += rng.random(b.shape).astype(np.float32) * 0.1
    r = replicate_consistency(a, [b], method="gradcam", others=["m:2"])
    assert r.summaries["accuracy"].mean == 1.0
    assert r.summaries["consistency"].mean == 0.0
    with pytest.raises(CheckInputError):
        replicate_consistency(a, [], method="gradcam")


def test_subgroup_gaps_are_differences_of_group_means() -> None:
    r = CheckResult("gaze", "gradcam")
    for key, v in {"a": 1.0, "b": 3.0, "c": 5.0, "d": 7.0, "e": float("nan")}.items():
        r.add_case(key, {"cc": v})
    groups = {
        "a": {"site": "x", "gender": "F"},
        "b": {"site": "x", "gender": "M"},
        "c": {"site": "y", "gender": "F"},
        "d": {"site": "y", "gender": "M"},
        "e": {"site": "z", "gender": "M"},
    }
    (sg,) = subgroup_gaps([r], groups, columns=("site", "gender"))
    assert sg.summaries["gaze.cc.gap[site]"].mean == 4.0  # means x=2, y=6; z has no finite score
    assert sg.summaries["gaze.cc.gap[gender]"].mean == 2.0  # F=3, M=5
    assert sg.details["gaze.cc.gap[site]"]["means"] == {"x": 2.0, "y": 6.0}


def test_compare_models_pairs_cases_by_key() -> None:
    a = CheckResult("gaze", "gradcam")
    b = CheckResult("gaze", "gradcam")
    for i, k in enumerate(["p", "q", "r", "s"]):
        a.add_case(k, {"nss": float(i) + 1.0})
        b.add_case(k, {"nss": float(i) + (0.5 if i % 2 else 0.0)})
    (c,) = compare_models("m:1", [a], "m:2", [b])
    assert (c.check, c.method, c.metric, c.n) == ("gaze", "gradcam", "nss", 4)
    assert c.mean_difference == pytest.approx(0.75)
    assert 0 < c.t_pvalue < 1


# ---------------------------------------------------------------- counterfactual (marker occlusion)

_SPEC = PreprocessSpec(size=H)


def _marker_case(i: int, *, with_marker: bool = True) -> ReferenceCase:
    """A random film with a bright burned-in marker at rows 0-4, columns 27-31 (as in :func:`_case`)."""
    base = _case(i)
    image = base.image.copy()
    image[0:5, 27:32] = 1.0
    x, box = preprocess(image, _SPEC)
    return ReferenceCase(
        key=base.key, index=i, label_index=i % 2, groups=base.groups, image=image, x=x, letterbox=box,
        heatmap=base.heatmap, fixation_map=base.fixation_map, finding_mask=base.finding_mask,
        anatomy=base.anatomy, marker=base.marker if with_marker else None,
    )  # fmt: skip


def _two_class(logit: np.ndarray) -> np.ndarray:
    p1 = 0.5 * (1.0 + np.tanh(0.5 * logit))  # the logistic function, without overflow
    return np.stack([1.0 - p1, p1], axis=1)


def _in_x(v: float) -> float:
    return (v - _SPEC.mean) / _SPEC.std  # an image value in model-input units


def _marker_reader(x: np.ndarray) -> np.ndarray:
    """Class 1 when the marker corner is bright: a model that learned the shortcut."""
    return _two_class(20.0 * (x[:, 0, 0:5, 27:32].mean(axis=(1, 2)) - _in_x(0.75)))


def _centre_reader(x: np.ndarray) -> np.ndarray:
    """Reads only the middle of the film: blind to the marker and to the control corner."""
    return _two_class(20.0 * (x[:, 0, 10:22, 10:22].mean(axis=(1, 2)) - _in_x(0.5)))


def test_painting_out_the_marker_flips_a_shortcut_model_and_not_a_blind_one() -> None:
    cases = [_marker_case(i) for i in range(6)] + [_marker_case(6, with_marker=False)]
    names = ("Normal", "CHF")
    shortcut = marker_occlusion(
        _marker_reader, cases, _SPEC, method="gradcam", class_names=names, batch_size=4
    )
    assert shortcut.check == "counterfactual"
    assert shortcut.method == "gradcam"
    flips = shortcut.array("marker_flip", [c.key for c in cases])
    np.testing.assert_array_equal(flips[:6], np.ones(6))  # bright marker → class 1; painted out → class 0
    assert np.isnan(flips[6])  # no marker recorded: not scored
    assert shortcut.summaries["marker_tv"].mean > 0.9
    assert shortcut.summaries["marker_flip"].n == 6
    assert shortcut.summaries["control_tv"].mean == 0.0  # the mirrored corner is not what it reads
    assert shortcut.baselines["control"] == {"marker_tv": 0.0, "marker_flip": 0.0}
    assert shortcut.case_class[cases[1].key] == "CHF"

    blind = marker_occlusion(_centre_reader, cases, _SPEC)
    assert blind.summaries["marker_tv"].max == 0.0
    assert blind.summaries["marker_flip"].max == 0.0


def test_paint_out_fills_the_box_with_the_median_of_its_surroundings() -> None:
    image = np.zeros((20, 20), np.float32)
    image[:, 11:] = 1.0
    image[2:5, 12:15] = 7.0  # the "marker"
    out = paint_out(image, (2, 4, 12, 14), ring=2)
    np.testing.assert_array_equal(
        out[2:5, 12:15], np.ones((3, 3), np.float32)
    )  # band is all 1 except at x 10-11
    assert image[3, 13] == 7.0  # the input is not modified
    np.testing.assert_array_equal(
        np.delete(out, np.s_[12:15], axis=1), np.delete(image, np.s_[12:15], axis=1)
    )


def test_occlusion_boxes_grow_the_marker_and_mirror_it() -> None:
    marker = np.zeros((10, 12), bool)
    marker[1:3, 8:11] = True
    assert occlusion_boxes(marker, margin=1) == ((0, 3, 7, 11), (0, 3, 0, 4))
    assert occlusion_boxes(np.zeros((10, 12), bool)) is None
    centred = np.zeros((10, 12), bool)
    centred[4:6, 5:7] = True
    assert occlusion_boxes(centred) is None  # the mirror box would overlap the marker


@pytest.mark.parametrize("compressed_share", [0.0, 1.0])
def test_paint_out_dicom_edits_only_the_box_and_keeps_the_header(tmp_path, compressed_share: float) -> None:
    import io

    import pydicom

    from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset

    root = tmp_path / "ph"
    generate_phantom_dataset(root, PhantomConfig(n=4, size=64, seed=9, compressed_share=compressed_share))
    path = next((root / "files").rglob("*.dcm"))
    original = pydicom.dcmread(path)
    box = (2, 7, 50, 58)  # y1, y2, x1, x2
    edited = pydicom.dcmread(io.BytesIO(paint_out_dicom(path.read_bytes(), box, ring=3)))
    before, after = original.pixel_array.astype(np.int64), edited.pixel_array.astype(np.int64)
    inside = np.zeros(before.shape, bool)
    inside[2:8, 50:59] = True
    band = np.zeros(before.shape, bool)
    band[0:11, 47:62] = True
    np.testing.assert_array_equal(after[~inside], before[~inside])
    assert np.unique(after[inside]).tolist() == [int(np.rint(np.median(before[band & ~inside])))]
    assert edited.file_meta.TransferSyntaxUID.is_compressed is False
    assert (edited.PatientID, edited.SOPInstanceUID, edited.PhotometricInterpretation) == (
        original.PatientID,
        original.SOPInstanceUID,
        original.PhotometricInterpretation,
    )
    with pytest.raises(CheckInputError):
        paint_out_dicom(b"not a dicom", box)


def test_counterfactual_is_na_not_fail_on_data_without_markers() -> None:
    from audit.policy import evaluate, load_policy

    cases = [_marker_case(i, with_marker=False) for i in range(3)]  # e.g. real MIMIC-CXR: no marker recorded
    result = marker_occlusion(_marker_reader, cases, _SPEC, method="gradcam")
    assert result.summaries["marker_flip"].n == 0
    (verdict,) = [
        v for v in evaluate(load_policy(None), [result], ["gradcam"]) if v.criterion == "shortcut_occlusion"
    ]
    assert (verdict.status, verdict.reason) == ("N/A", "no finite value")
