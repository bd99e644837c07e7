"""Policy file → PASS/FAIL verdicts and the Table-2-shaped table (audit.policy); load-time validation of
methods, method parameters, metrics and baselines; ``audit policy check``; the shipped policies (the
default and the Kubernetes ConfigMap copy) run end to end without an error."""

from __future__ import annotations

import inspect
import json
from fnmatch import fnmatchcase
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from audit.checks import CheckResult, MetricSummary
from audit.cli import EXIT_ERROR, EXIT_USAGE, app
from audit.errors import PolicyError
from audit.policy import (
    ALL_CHECKS,
    CHECK_METRICS,
    DEFAULT_POLICY_PATH,
    Policy,
    evaluate,
    format_table,
    gate_passed,
    load_policy,
)
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry
from mimicry.saliency import get_method

REPO = Path(__file__).parents[2]
KUSTOMIZATION = REPO / "deploy" / "k8s" / "base" / "kustomization.yaml"


def test_default_policy_is_documented_and_valid() -> None:
    p = load_policy()
    assert DEFAULT_POLICY_PATH.name == "policy_default.yaml"
    ids = [c.id for c in p.criteria]
    assert ids[:4] == ["utility_avg", "randomisation", "repeatability_low", "reproducibility_low"]
    assert p.randomisation.n_pairs == 50
    assert p.method_params["integrated_gradients"] == {"steps": 25}  # Arun et al.: IG with 25 steps
    assert load_policy(DEFAULT_POLICY_PATH).sha256 == p.sha256


def _configmap_policy() -> Path:
    """The policy file the kustomization puts into the ``mimicry-audit-policy`` ConfigMap (read unchanged)."""
    kust = yaml.safe_load(KUSTOMIZATION.read_text())
    (gen,) = [g for g in kust["configMapGenerator"] if g["name"] == "mimicry-audit-policy"]
    (entry,) = gen["files"]
    key, _, rel = entry.partition("=")
    assert key == "policy.yaml"  # the CronJob and the watch mount it as /etc/mimicry/audit/policy.yaml
    return KUSTOMIZATION.parent / rel


def test_every_check_registers_its_metrics() -> None:
    assert set(CHECK_METRICS) == set(ALL_CHECKS)


def test_policy_params_are_those_the_methods_take() -> None:
    # The parameter names of the registry's ``defaults`` are the keyword arguments ``attribute`` accepts:
    # a policy validated against ``defaults`` passes only what the method's signature names.
    for path in (DEFAULT_POLICY_PATH, _configmap_policy()):
        pol = load_policy(path)
        for method, params in pol.method_params.items():
            sig = inspect.signature(type(get_method(method)).attribute).parameters
            assert set(params) <= set(sig), (path.name, method)


def _crit(check: str, metric: str, threshold: object, cid: str = "a") -> str:
    return f"{{id: {cid}, group: G, check: {check}, metric: {metric}, op: '<', threshold: {threshold}}}"


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        # the shipped default's old mistake: IG takes `steps`, not captum's `n_steps`
        (
            "method_params: {integrated_gradients: {n_steps: 25}}",
            ["method_params.integrated_gradients.n_steps", "takes no parameter 'n_steps'", "steps"],
        ),
        ("method_params: {gradient: {batch_size: 2.5}}", ["batch_size must be an integer"]),
        ("method_params: {smoothgrad: {noise_level: fast}}", ["noise_level must be a number"]),
        ("methods: [gradcam, gradcamm]", ["unknown saliency method 'gradcamm'"]),
        ("method_params: {multilayer_iba: {layer: block2}}", ["multilayer_iba takes no parameter 'layer'"]),
        ("method_params: {nope: {}}", ["method_params: unknown saliency method 'nope'"]),
        ("criteria: [" + _crit("gaze", "nsss", 1) + "]", ["criteria[0] (a).metric", "no metric 'nsss'"]),
        ("criteria: [" + _crit("repeatability", "ssim", "{baseline: uniform}") + "]", ["no baseline"]),
        ("criteria: [" + _crit("subgroups", "'gaze.nss.gap[ward]'", 1) + "]", ["'ward' is not a group"]),
        ("criteria: [" + _crit("subgroups", "'gaze.nsss.gap[site]'", 1) + "]", ["no metric 'nsss'"]),
        ("criteria: [" + _crit("subgroups", "gaze_nss", 1) + "]", ["is not CHECK.METRIC.gap[COLUMN]"]),
        (
            "criteria: [{id: a, group: G, check: gaze, metric: nss, op: '<', threshold: 1, methods: [x]}]",
            ["criteria[0] (a).methods: unknown saliency method 'x'"],
        ),
    ],
)
def test_policy_semantics_are_validated_on_load(tmp_path: Path, text: str, needles: list[str]) -> None:
    f = tmp_path / "p.yaml"
    f.write_text("version: 1\n" + text + "\n")
    with pytest.raises(PolicyError) as info:
        load_policy(f)
    for needle in needles:
        assert needle in str(info.value)
    res = CliRunner().invoke(app, ["policy", "check", str(f)])
    assert res.exit_code == EXIT_USAGE
    assert needles[0] in res.output


def test_policy_check_accepts_patterns_and_the_shipped_policies(tmp_path: Path) -> None:
    ok = (
        "version: 1\nmethods: [gradcam, integrated_gradients]\n"
        "method_params: {integrated_gradients: {steps: 8, baseline: 0.5}, smoothgrad: {noise_level: 1},\n"
        "  iba: {layer: block2, stats_samples: 6, beta: 3},\n"
        "  multilayer_iba: {layers: [block1], stats_split: a}}\n"
        "criteria:\n"
        "  - " + _crit("cascading_randomisation", "'ssim@features.0'", 1, "a") + "\n"
        "  - " + _crit("subgroups", "'faithfulness.insertion_auc.gap[gender]'", 1, "b") + "\n"
        "  - " + _crit("localisation", "iou", "{baseline: average_mask}", "c") + "\n"
    )
    (tmp_path / "ok.yaml").write_text(ok)
    for f in (tmp_path / "ok.yaml", DEFAULT_POLICY_PATH, _configmap_policy()):
        res = CliRunner().invoke(app, ["policy", "check", str(f)])
        assert res.exit_code == 0, res.output
        assert res.output.startswith(f"OK: {f.name}")
    # several problems are all reported, one line each
    bad = ok.replace("steps: 8", "n_steps: 8").replace("iou", "iouu")
    (tmp_path / "bad.yaml").write_text(bad)
    res = CliRunner().invoke(app, ["policy", "check", str(tmp_path / "bad.yaml")])
    assert res.exit_code == EXIT_USAGE
    assert "n_steps" in res.output
    assert "iouu" in res.output


# ------------------------------------------------------------------ the shipped policies, end to end


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shipped_policy")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=12, size=48, seed=4))
    reg = Registry(root / "registry")
    for scale in (40.0, 30.0):  # two replicates: repeatability runs too
        reg.publish(
            LeftRightToyNet(scale=scale).eval(),
            name="lr",
            held_batch=torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0)),
            preprocessing=PreprocessSpec(size=32),
            arch_kwargs={"scale": scale},
            replicate_group="lr-recipe",
        )
    return {"root": root, "ref": root / "ref", "registry": root / "registry"}


def _audit(tiny: dict[str, Path], policy: Path, out: str, *extra: str) -> object:
    return CliRunner().invoke(
        app,
        [
            "run",
            "--registry", str(tiny["registry"]),
            "--model", "lr:1",
            "--reference", str(tiny["ref"]),
            "--policy", str(policy),
            "--out", str(tiny["root"] / out),
            "--no-history",
            "--no-progress",
            *extra,
        ],
    )  # fmt: skip


@pytest.mark.parametrize("which", ["default", "configmap"])
def test_shipped_policy_runs_every_method_without_error(tiny: dict[str, Path], which: str) -> None:
    path = DEFAULT_POLICY_PATH if which == "default" else _configmap_policy()
    pol = load_policy(path)
    # Only the sample sizes shrink (seconds, not minutes); methods, method parameters, checks and criteria
    # are the shipped file's.
    small = yaml.safe_load(path.read_text())
    small.update(bootstrap={**small["bootstrap"], "n_resamples": 200}, pairwise_cases=4)
    small["randomisation"] = {**small["randomisation"], "n_pairs": 4}
    small["faithfulness"] = {"steps": 4}
    (tiny["root"] / f"{which}.yaml").write_text(yaml.safe_dump(small))
    res = _audit(tiny, tiny["root"] / f"{which}.yaml", which, "--max-cases", "6")
    assert res.exit_code in (0, 1), res.output  # a verdict, not EXIT_ERROR / EXIT_USAGE
    (m,) = json.loads((tiny["root"] / which / "report.json").read_text())["models"]
    assert m["errors"] == []
    assert m["status"] in ("passed", "failed")
    assert m["methods"] == pol.methods == ["gradcam", "gradient", "integrated_gradients"]
    ran = {(r["check"], r["method"]) for r in m["results"]}
    for method in pol.methods:  # every method produced maps that were scored
        assert {("gaze", method), ("faithfulness", method), ("cascading_randomisation", method)} <= ran
    # every metric a check reported is one the policy validation knows (the registry of checks is complete)
    for r in m["results"]:
        if r["check"] != "subgroups":
            for metric in r["summaries"]:
                assert any(fnmatchcase(metric, p) for p in CHECK_METRICS[r["check"]]), (r["check"], metric)


def test_an_audit_that_cannot_run_exits_3_not_1(tiny: dict[str, Path]) -> None:
    # Valid on load (batch_size is an integer parameter of IG) but refused when IG runs: the method errors.
    text = DEFAULT_POLICY_PATH.read_text().replace("{steps: 25}", "{steps: 25, batch_size: 0}")
    assert "batch_size: 0" in text
    small = yaml.safe_load(text)
    small.update(checks=["gaze", "runtime_reproducibility"], bootstrap={"n_resamples": 200})
    (tiny["root"] / "broken.yaml").write_text(yaml.safe_dump(small))
    res = _audit(tiny, tiny["root"] / "broken.yaml", "broken", "--max-cases", "3")
    assert res.exit_code == EXIT_ERROR == 3, res.output
    assert "): ERROR" in res.output  # the model's line: "lr:1 (<architecture>): ERROR"
    assert "audit gate: ERROR" in res.output
    report = json.loads((tiny["root"] / "broken" / "report.json").read_text())
    assert report["status"] == "error"
    assert any("integrated_gradients" in e for e in report["models"][0]["errors"])
    assert "Gate: ERROR" in (tiny["root"] / "broken" / "summary.md").read_text()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (
            "version: 1\ncriteria: [{id: a, group: G, check: nonsense, metric: m, op: '<', threshold: 1}]",
            "nonsense",
        ),
        ("version: 1\ncriteria: [{id: a, group: G, check: gaze, metric: m, op: '=', threshold: 1}]", "op"),
        ("version: 2\n", "version"),
        ("version: 1\nunknown_key: 3\n", "unknown_key"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_invalid_policies_raise_policy_error(tmp_path: Path, text: str, needle: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(text)
    with pytest.raises(PolicyError, match=needle):
        load_policy(f)
    with pytest.raises(PolicyError):
        load_policy(tmp_path / "missing.yaml")


def _policy() -> Policy:
    return Policy.model_validate(
        {
            "criteria": [
                {
                    "id": "util",
                    "group": "Utility",
                    "label": "AVG",
                    "check": "localisation",
                    "metric": "auprc",
                    "op": ">",
                    "threshold": {"baseline": "average_mask"},
                },
                {
                    "id": "rand",
                    "group": "Randomization",
                    "check": "cascading_randomisation",
                    "metric": "ssim_full",
                    "op": "<",
                    "threshold": {"baseline": "degradation_threshold", "factor": 2},
                },
                {
                    "id": "rep",
                    "group": "Repeatability",
                    "label": "LOW",
                    "check": "repeatability",
                    "metric": "ssim",
                    "op": ">",
                    "threshold": 0.5,
                },
                {
                    "id": "info",
                    "group": "Gaze",
                    "label": "CC",
                    "check": "gaze",
                    "metric": "cc",
                    "op": ">=",
                    "threshold": 0.0,
                    "gate": False,
                    "statistic": "ci_low",
                },
            ]
        }
    )


def _result(check: str, method: str, metric: str, mean: float, **baselines: float) -> CheckResult:
    r = CheckResult(check, method)
    r.summaries[metric] = MetricSummary(mean, mean, 0.1, mean - 0.1, mean + 0.1, 10)
    for name, v in baselines.items():
        r.baselines[name] = {metric: v}
    return r


def test_evaluate_baselines_factors_na_and_gate() -> None:
    results = [
        _result("localisation", "gradcam", "auprc", 0.30, average_mask=0.20),
        _result("localisation", "gradient", "auprc", 0.10, average_mask=0.20),
        _result("cascading_randomisation", "gradcam", "ssim_full", 0.50, degradation_threshold=0.3),
        _result("gaze", "gradcam", "cc", 0.05),
    ]
    v = {(x.method, x.criterion): x for x in evaluate(_policy(), results, ["gradcam", "gradient"])}
    assert v[("gradcam", "util")].status == "PASS"
    assert v[("gradcam", "util")].threshold == 0.20
    assert v[("gradient", "util")].status == "FAIL"
    assert v[("gradcam", "rand")].status == "PASS"
    assert v[("gradcam", "rand")].threshold == pytest.approx(0.6)
    assert v[("gradient", "rand")].status == "N/A"
    assert v[("gradient", "rand")].reason == "check not run"
    assert v[("gradcam", "rep")].status == "N/A"
    assert v[("gradcam", "info")].status == "FAIL"
    assert v[("gradcam", "info")].value == pytest.approx(-0.05)
    # gradient's utility FAIL is gating; gradcam's CC (ci_low) FAIL is not.
    assert not gate_passed(list(v.values()))
    assert gate_passed([x for x in v.values() if x.method == "gradcam"])


def test_format_table_is_shaped_like_table_2() -> None:
    results = [
        _result("localisation", "gradcam", "auprc", 0.30, average_mask=0.20),
        _result("localisation", "gradient", "auprc", 0.10, average_mask=0.20),
    ]
    table = format_table(evaluate(_policy(), results, ["gradcam", "gradient"]))
    assert table.splitlines() == [
        "Method    Utility  Randomization  Repeatability  Gaze",
        "          AVG                     LOW            CC*",
        "gradcam   PASS     N/A            N/A            N/A",
        "gradient  FAIL     N/A            N/A            N/A",
    ]
