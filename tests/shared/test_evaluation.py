"""Evaluation reports: what was scored and what failed, named metrics, multi-label calibration, the
escalation plot. Pure functions and files; no services."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from shared.errors import FusionqError, ScorerError
from shared.evaluation import metrics_line, scored_line, write_report
from shared.fusion.calibration import fit_temperature
from shared.metrics import evaluate_predictions, expected_calibration_error, label_calibration_error
from shared.reports import ESCALATION_PLOT_MIN_ITEMS, _comparison_markdown, _plot_tradeoff
from shared.textio import LabelledData

LABELS = ["business", "science", "sports"]


def _data(labels: list[list[str]], multi_label: bool = False) -> LabelledData:
    return LabelledData(texts=[f"text {i}" for i in range(len(labels))], labels=labels, multi_label=multi_label,
                        source="mem.csv")


def test_nothing_scored_raises_and_the_files_say_so(tmp_path):
    data = _data([["sports"], ["science"], ["business"]])
    with pytest.raises(ScorerError) as caught:
        write_report(name="llm fake", data=data, labels=LABELS, multi_label=False, predicted=[None] * 3,
                     confidence=[None] * 3, errors=["HTTP 500: boom", "HTTP 500: again", None], seconds=1.0,
                     out_dir=tmp_path, nothing_scored=ScorerError)
    message = str(caught.value)
    assert "nothing was scored" in message and "all 3 item(s) failed" in message and "HTTP 500: boom" in message
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["n_scored"] == 0 and report["n_failed"] == 3 and report["first_error"] == "HTTP 500: boom"
    assert "accuracy" not in report and "ece" not in report  # no zeros that look like a score
    md = (tmp_path / "report.md").read_text()
    assert "Nothing was scored" in md and "0.0000" not in md


def test_nothing_scored_defaults_to_a_fusionq_error(tmp_path):
    with pytest.raises(FusionqError, match="nothing was scored"):
        write_report(name="c@1", data=_data([["sports"]]), labels=LABELS, multi_label=False, predicted=[None],
                     confidence=[None], seconds=0.0, out_dir=tmp_path)


def test_some_failed_metrics_cover_the_scored_ones_and_count_the_rest(tmp_path):
    data = _data([["sports"], ["science"], ["business"], ["sports"]])
    report = write_report(name="llm fake", data=data, labels=LABELS, multi_label=False,
                          predicted=[["sports"], None, ["sports"], ["sports"]], confidence=[0.9, None, 0.6, 0.8],
                          errors=[None, "timeout after 5 s", None, None], seconds=1.0, out_dir=tmp_path)
    assert report["n_scored"] == 3 and report["n_failed"] == 1 and report["first_error"] == "timeout after 5 s"
    assert report["accuracy"] == pytest.approx(2 / 3) and report["n"] == 3
    assert scored_line(report) == "scored 3 of 4 texts (1 failed; first error: timeout after 5 s)"
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["n_failed"] == 1 and written["accuracy"] == pytest.approx(2 / 3)
    md = (tmp_path / "report.md").read_text()
    assert "1 failed; first error: timeout after 5 s" in md and "Metrics cover the 3 scored items only" in md


def test_multi_label_report_names_both_f1s_and_both_eces(tmp_path):
    data = _data([["sports", "science"], ["business"], ["science"]], multi_label=True)
    probabilities = [[0.1, 0.8, 0.9], [0.7, 0.2, 0.1], [0.2, 0.4, 0.7]]
    report = write_report(name="m@1", data=data, labels=LABELS, multi_label=True,
                          predicted=[["science", "sports"], ["business"], ["sports"]], confidence=[0.8, 0.7, 0.6],
                          probabilities=probabilities, seconds=1.0, out_dir=tmp_path)
    assert {"macro_f1", "micro_f1", "ece", "ece_exact_match"} <= set(report)
    assert report["ece"] == pytest.approx(label_calibration_error(np.array(probabilities),
                                                                  np.array([[0, 1, 1], [1, 0, 0], [0, 1, 0]])))
    line = metrics_line(report, True)
    assert f"macro-F1 {report['macro_f1']:.4f}" in line and f"micro-F1 {report['micro_f1']:.4f}" in line
    assert "ECE per label" in line and "ECE exact match" in line
    md = (tmp_path / "report.md").read_text()
    assert f"| macro-F1 | {report['macro_f1']:.4f} |" in md and f"| micro-F1 | {report['micro_f1']:.4f} |" in md
    assert "| expected calibration error (per label) |" in md and "exact match" in md
    assert f"perfectly calibrated model could show on these items (95th percentile) | {report['ece_noise_floor']:.4f} |" in md
    assert "per label" in json.loads((tmp_path / "metrics.json").read_text())["ece_note"]


def test_comparison_markdown_names_macro_and_micro_f1_for_multi_label():
    row = {"n_answered": 2, "accuracy": 0.5, "macro_f1": 0.25, "micro_f1": 0.75, "ece": 0.01, "ece_exact_match": 0.2,
           "escalated_share": 0.0, "llm_questions_per_1000": 0, "llm_calls_per_1000": 0,
           "llm_cost_per_1000_usd": 0.0, "wall_seconds": 1.0}
    md = _comparison_markdown({"classifier": "m@1", "data": "d.csv", "n_texts": 2, "multi_label": True,
                               "escalation": {}, "modes": {"fast": row}})
    header = next(line for line in md.splitlines() if line.startswith("| mode"))
    assert "macro-F1" in header and "micro-F1" in header and "ECE per label" in header
    assert "| fast | 0.5000 | 0.2500 | 0.7500 | 0.0100 | 0.2000 |" in md
    assert "ECE noise floor" not in md  # a row without one (an older report) gets no sentence
    md = _comparison_markdown({"classifier": "m@1", "data": "d.csv", "n_texts": 2, "multi_label": True,
                               "escalation": {}, "modes": {"fast": {**row, "ece_noise_floor": 0.031},
                                                           "full": {**row, "ece_noise_floor": 0.042}}})
    assert "perfectly calibrated model could show an ECE up to 0.0420 on these items" in md
    line = metrics_line(row, True)
    assert "macro-F1 0.2500" in line and "micro-F1 0.7500" in line


def test_comparison_of_a_mode_that_answered_nothing_shows_no_numbers():
    row = {"n_answered": 0, "accuracy": None, "macro_f1": None, "ece": None, "escalated_share": 1.0,
           "llm_questions_per_1000": 1000, "llm_calls_per_1000": 0, "llm_cost_per_1000_usd": 0.0, "wall_seconds": 0.1}
    md = _comparison_markdown({"classifier": "c@1", "data": "d.csv", "n_texts": 2, "multi_label": False,
                               "escalation": {}, "modes": {"llm:api": row}})
    assert "| llm:api | nothing scored | nothing scored | nothing scored |" in md
    assert metrics_line(row, False) == "nothing scored (every answer failed)"


def test_per_label_ece_is_what_temperature_scaling_fits():
    """Per-label probabilities against 0/1 outcomes; a well-calibrated set scores ~0, whatever the
    exact-match ECE of the item confidence says."""
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, (20000, 5))
    y = rng.uniform(0, 1, p.shape) < p
    assert label_calibration_error(p, y) < 0.01
    assert label_calibration_error(np.full((4, 2), 0.9), np.zeros((4, 2))) == pytest.approx(0.9)
    pred = p >= 0.5
    m = evaluate_predictions(y, pred, np.maximum(p, 1 - p).min(1), [f"c{i}" for i in range(5)], multi_label=True,
                             probabilities=p)
    assert m["ece"] < 0.01
    # the min-certainty confidence is far above the chance that all five labels are right
    assert m["ece_exact_match"] == pytest.approx(
        expected_calibration_error(np.maximum(p, 1 - p).min(1), (pred == y).all(1)))
    assert m["ece_exact_match"] > 0.2


def _calibrated_multi_label(seed: int, n: int = 60, c: int = 10):
    """Logits of a model that is already calibrated (outcomes drawn from its own sigmoid), sparse like
    real multi-label data: one likely label per item, the others unlikely."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-5, 1.5, (n, c))
    z[np.arange(n), rng.integers(0, c, n)] = rng.normal(4, 1.5, n)
    y = (rng.uniform(0, 1, (n, c)) < 1 / (1 + np.exp(-z))).astype(np.float32)
    return z, y


@pytest.mark.parametrize("seed", range(4))
def test_multi_label_temperature_of_a_calibrated_model_stays_near_one(seed):
    """Regression: smoothing each of the C binary targets by 1/(N+2) pulled every absent label's
    probability up and fitted T ~ 1.3 here (1.5-1.9 on Reuters-10), worsening per-label ECE ~2x."""
    z, y = _calibrated_multi_label(seed)
    t = fit_temperature(torch.tensor(z), torch.tensor(y), multi_label=True)
    assert 0.85 < t < 1.2
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    assert label_calibration_error(sigmoid(z / t), y) <= label_calibration_error(sigmoid(z), y) + 0.005


def test_multi_label_temperature_does_not_collapse_on_a_small_perfect_set():
    logits = torch.tensor([[5.0, -5.0, -5.0], [-5.0, 5.0, -5.0]] * 10)
    targets = (logits > 0).float()
    t = fit_temperature(logits, targets, multi_label=True)
    assert 0.5 < t < 3.0
    assert (1 / (1 + np.exp(-5.0 / t))) < 0.999  # 60 right decisions do not justify certainty


def _curve(n_points: int = 21) -> list[dict]:
    shares = np.linspace(0, 1, n_points)
    return [{"target_share": float(s), "threshold": float(s), "escalated_share": float(s),
             "kept_accuracy": (0.8 + 0.2 * float(s)) if s < 1 else None, "overall_accuracy": None,
             "llm_cost_per_1000": 0.0} for s in shares]


def test_escalation_plot_below_the_minimum_draws_no_curve_and_says_why(tmp_path):
    path = tmp_path / "escalation.png"
    fig = _plot_tradeoff(_curve(), path, n_items=89)
    assert path.read_bytes()[:4] == b"\x89PNG"
    [ax] = fig.axes
    assert not ax.lines and not ax.collections  # no curve, no band
    assert "n = 89" in ax.get_title()
    notes = " ".join(t.get_text() for t in ax.texts)
    assert "89 validation items" in notes and str(ESCALATION_PLOT_MIN_ITEMS) in notes
    assert ax.get_xlabel() and ax.get_ylabel()


def test_escalation_plot_above_the_minimum_shows_n_labels_and_an_error_band(tmp_path):
    path = tmp_path / "escalation.png"
    fig = _plot_tradeoff(_curve(), path, n_items=ESCALATION_PLOT_MIN_ITEMS + 300)
    [ax] = fig.axes
    assert len(ax.lines) == 1 and ax.collections  # the kept-accuracy curve and its standard-error band
    assert f"n = {ESCALATION_PLOT_MIN_ITEMS + 300} validation items" in ax.get_title()
    assert ax.get_xlabel() == "share of items escalated to the LLM path" and ax.get_ylabel() == "validation accuracy"
    assert path.stat().st_size > 0


def test_comparison_markdown_says_when_the_escalation_curve_was_not_drawn():
    md = _comparison_markdown({"classifier": "c@1", "data": "d.csv", "n_texts": 0, "multi_label": False,
                               "escalation": {"threshold": 0.5, "target": {"share": 0.2}, "validation_size": 89,
                                              "validation_escalated_share": 0.2}, "modes": {}})
    assert "89 validation items" in md and f"fewer than {ESCALATION_PLOT_MIN_ITEMS}, so no curve is drawn" in md


def test_multi_label_validation_report_gives_the_per_label_ece_and_the_exact_match_one():
    from shared.fusion.predict import decide
    from shared.fusion.training import Candidate, Signals, TrainingConfig, logits_of, train_fusion

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (4, 16))
    y = (rng.uniform(0, 1, (240, 4)) < 0.3).astype(np.float32)
    y[np.arange(240), rng.integers(0, 4, 240)] = 1.0
    x = (y @ centres + rng.normal(0, 0.8, (240, 16))).astype(np.float32)
    val_x, val_y = x[200:], y[200:]
    trained = train_fusion(x[:200], y[:200], labels=list("abcd"), multi_label=True, candidates=(Candidate(hidden=0),),
                           config=TrainingConfig(max_epochs=30), validation=(val_x, val_y))
    v = trained.validation
    assert {"ece_raw", "ece_calibrated", "ece_exact_match_raw", "ece_exact_match_calibrated", "ece_note"} <= set(v)
    logits = logits_of(trained.model, Signals(val_x))
    calibrated = decide(logits / v["temperature"], multi_label=True).probabilities
    assert v["ece_calibrated"] == pytest.approx(label_calibration_error(calibrated, val_y), abs=1e-5)
