"""End to end: `audit run` on a phantom reference and a tmp registry — exit codes, reports, cache, history,
and the promotion gate through the registry CLI (audit.cli, audit.runner, audit.report, audit.gate)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from audit.cli import app
from audit.gate import make_gate_factory
from audit.settings import AuditSettings
from mimicry.data.phantom import PhantomConfig, generate_phantom_dataset
from mimicry.models import LeftRightToyNet
from mimicry.preprocess import PreprocessSpec
from mimicry.registry import Registry
from mimicry_cli.commands.registry import make_app

SIZE = 32

PASSING = """
version: 1
methods: [gradcam]
pairwise_cases: 4
bootstrap: {n_resamples: 200}
criteria:
  - {id: runtime_probs, group: Runtime, label: PROBS, check: runtime_reproducibility,
     metric: probs_max_abs_diff, statistic: max, op: "<=", threshold: 1.0e-4}
  - {id: repeatability_low, group: Repeatability, label: LOW, check: repeatability, metric: ssim,
     op: ">", threshold: 0.5}
"""

# Insertion AUC integrates a probability over [0, 1]: it can never exceed 1, so this criterion must FAIL.
FAILING = (
    PASSING
    + """  - {id: impossible, group: Faithfulness, label: INS, check: faithfulness,
     metric: insertion_auc, op: ">", threshold: 1.0}
"""
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("audit_run")
    generate_phantom_dataset(root / "ref", PhantomConfig(n=20, size=64, seed=3))
    reg = Registry(root / "registry")
    x = torch.rand(4, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    spec = PreprocessSpec(size=SIZE)
    for scale in (40.0, 30.0):  # two replicates: same maps up to scale → repeatability SSIM 1
        reg.publish(
            LeftRightToyNet(scale=scale).eval(),
            name="lr",
            held_batch=x,
            preprocessing=spec,
            arch_kwargs={"scale": scale},
            replicate_group="lr-recipe",
            dataset_fingerprint="phantom-3",
        )
    (root / "pass.yaml").write_text(PASSING)
    (root / "fail.yaml").write_text(FAILING)
    return {"root": root, "ref": root / "ref", "registry": root / "registry"}


def _run(setup: dict[str, Path], policy: str, out: str, *extra: str) -> object:
    return CliRunner().invoke(
        app,
        [
            "run",
            "--registry",
            str(setup["registry"]),
            "--model",
            "lr:1",
            "--reference",
            str(setup["ref"]),
            "--policy",
            str(setup["root"] / policy),
            "--out",
            str(setup["root"] / out),
            "--history",
            str(setup["root"] / "history.sqlite"),
            "--no-progress",
            *extra,
        ],
    )


def test_run_passes_writes_reports_and_then_uses_the_cache(setup: dict[str, Path]) -> None:
    res = _run(setup, "pass.yaml", "out1")
    assert res.exit_code == 0, res.output
    assert "audit gate: PASSED" in res.output
    assert re.search(r"gradcam\s+PASS\s+PASS", res.output)
    report = json.loads((setup["root"] / "out1" / "report.json").read_text())
    assert (report["schema"], report["schema_version"], report["passed"]) == ("mimicry.audit.report", 1, True)
    (m,) = report["models"]
    assert (m["ref"], m["n_cached"]) == ("lr:1", 0)
    statuses = {(v["criterion"], v["method"]): v["status"] for v in m["verdicts"]}
    assert statuses == {("runtime_probs", "gradcam"): "PASS", ("repeatability_low", "gradcam"): "PASS"}
    rep = next(r for r in m["results"] if r["check"] == "repeatability")
    assert rep["summaries"]["ssim"]["mean"] == pytest.approx(1.0)
    assert rep["details"]["others"] == ["lr:2"]
    checks = {r["check"] for r in m["results"]}
    assert {
        "gaze",
        "localisation",
        "shortcut",
        "faithfulness",
        "cascading_randomisation",
        "subgroups",
        "counterfactual",
        "robustness",
    } <= checks
    gaze = next(r for r in m["results"] if r["check"] == "gaze")
    assert gaze["summaries"]["sauc"]["n"] > 0  # negatives from the other reference cases' fixations
    from audit.history import History

    hist_db = History(setup["root"] / "history.sqlite")
    try:
        run = max(hist_db.runs("lr", 1), key=lambda r: r.id)
        rows = {(r["check"], r["metric"]) for r in hist_db.summaries(run.id)}
    finally:
        hist_db.close()
    assert {("gaze", "sauc"), ("robustness", "max_sensitivity"), ("robustness", "local_lipschitz")} <= rows
    occl = next(r for r in m["results"] if r["check"] == "counterfactual")
    assert occl["method"] == "gradcam"
    assert occl["summaries"]["marker_tv"]["n"] == m["n_cases"]  # every phantom case has a marker
    assert occl["baselines"]["control"]["marker_tv"] == pytest.approx(occl["summaries"]["control_tv"]["mean"])
    html = (setup["root"] / "out1" / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3
    assert not re.search(r"(src|href)=\"https?://", html)  # self-contained
    assert "PASSED" in (setup["root"] / "out1" / "summary.md").read_text()
    # No dataset identifier leaks into the report: case keys are hashes.
    ids = (setup["ref"] / "master_sheet.csv").read_text().splitlines()[1].split(",")[0]
    assert ids not in json.dumps(report)

    res2 = _run(setup, "pass.yaml", "out2")
    assert res2.exit_code == 0, res2.output
    m2 = json.loads((setup["root"] / "out2" / "report.json").read_text())["models"][0]
    assert m2["n_cached"] == m2["n_cases"] == m["n_cases"]  # one method: every case came from the cache
    gaze1 = next(r for r in m["results"] if r["check"] == "gaze")["values"]
    gaze2 = next(r for r in m2["results"] if r["check"] == "gaze")["values"]
    assert gaze1 == gaze2


def test_failing_gate_exits_1_and_blocks_promotion(
    setup: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    res = _run(setup, "fail.yaml", "out3")
    assert res.exit_code == 1, res.output
    assert "audit gate: FAILED" in res.output
    hist = CliRunner().invoke(
        app, ["history", "--history", str(setup["root"] / "history.sqlite"), "--metric", "gaze/gradcam/nss"]
    )
    assert hist.exit_code == 0, hist.output
    assert "failed" in hist.output
    assert "passed" in hist.output
    assert "trend of gaze/gradcam/nss" in hist.output
    reg_app = make_app(make_gate_factory(AuditSettings(history_db=setup["root"] / "history.sqlite")))
    refused = CliRunner().invoke(reg_app, ["promote", "lr:1", "--registry", str(setup["registry"])])
    assert refused.exit_code == 1
    assert "failed" in refused.output
    forced = CliRunner().invoke(reg_app, ["promote", "lr:1", "--force", "--registry", str(setup["registry"])])
    assert forced.exit_code == 0, forced.output
    assert "FORCED" in forced.output


def test_usage_errors_exit_2(setup: dict[str, Path]) -> None:
    (setup["root"] / "bad.yaml").write_text("version: 7\n")
    assert _run(setup, "bad.yaml", "out4").exit_code == 2
    # black-box mode against a closed port: the endpoint is unreachable → input error
    assert (
        _run(
            setup, "pass.yaml", "out4", "--endpoint", "http://127.0.0.1:1", "--endpoint-retries", "0"
        ).exit_code
        == 2
    )
    res = CliRunner().invoke(
        app,
        [
            "run",
            "--registry",
            str(setup["registry"]),
            "--model",
            "nope:1",
            "--reference",
            str(setup["ref"]),
            "--no-history",
        ],
    )
    assert res.exit_code == 2
    assert _run(setup, "pass.yaml", "out4", "--methods", "no_such_method").exit_code == 2


def test_randomisation_stages_and_random_logit_reach_json_history_and_prometheus(
    setup: dict[str, Path], tmp_path: Path
) -> None:
    from prometheus_client import generate_latest

    from audit.history import History
    from audit.policy import load_policy
    from audit.prometheus import AuditMetrics
    from audit.report.json_report import report_dict
    from audit.runner import AuditConfig, run_audit

    checks = ["cascading_randomisation", "independent_randomisation", "random_logit"]
    policy = load_policy(None).model_copy(update={"methods": ["gradcam"], "pairwise_cases": 4})
    report = run_audit(
        AuditConfig(
            registry=setup["registry"],
            models=["lr:1"],
            reference=setup["ref"],
            policy=policy,
            checks=checks,
            history_path=tmp_path / "history.sqlite",
        )
    )
    (m,) = report_dict(report)["models"]
    assert not m["errors"]
    by_check = {r["check"]: r for r in m["results"]}
    assert set(by_check) == set(checks)
    for check in checks[:2]:  # LeftRightToyNet: every parameterised block feeds the logits
        assert by_check[check]["details"]["stages"] == ["classifier", "block2", "block1"]
        assert by_check[check]["details"]["excluded"] == []
    rl = by_check["random_logit"]
    assert set(rl["summaries"]) == {"ssim", "spearman"}
    assert rl["baselines"]["degradation_threshold"]["ssim"] is not None
    assert set(rl["details"]["other_class"]) == set(rl["values"]["ssim"])
    verdict = next(v for v in m["verdicts"] if v["criterion"] == "random_logit")
    assert verdict["status"] in {"PASS", "FAIL"}
    assert verdict["gate"] is False
    assert verdict["value"] == pytest.approx(rl["summaries"]["ssim"]["mean"])
    with History(tmp_path / "history.sqlite") as h:
        (run,) = h.runs()
        rows = {(s["check"], s["metric"]) for s in h.summaries(run.id)}
        stage_rows = {("cascading_randomisation", f"ssim@{s}") for s in ("classifier", "block2", "block1")}
        assert {("random_logit", "ssim"), *stage_rows} <= rows
        assert "random_logit" in {v["criterion"] for v in h.verdicts(run.id)}
    metrics = AuditMetrics()
    metrics.observe(report)
    text = generate_latest(metrics.registry).decode()
    assert re.search(r'mimicry_audit_score\{[^}]*check="random_logit"[^}]*metric="ssim"', text)
    assert re.search(r'mimicry_audit_check_passed\{[^}]*check="random_logit"', text)
