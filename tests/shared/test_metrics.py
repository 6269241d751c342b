import numpy as np

from shared.metrics import ece_noise_floor, expected_calibration_error
from shared.metrics import coverage_accuracy, evaluate_predictions


def test_perfectly_calibrated_bins_have_zero_ece():
    confidence = np.array([0.8] * 10)
    correct = np.array([1] * 8 + [0] * 2)
    assert expected_calibration_error(confidence, correct) < 1e-12
    assert abs(expected_calibration_error(np.array([1.0] * 4), np.array([1, 0, 0, 0])) - 0.75) < 1e-12


def test_coverage_keeps_the_most_confident_items():
    rows = coverage_accuracy(np.array([0.9, 0.1, 0.8, 0.2]), np.array([1, 0, 1, 1]), coverages=(0.5, 1.0))
    assert rows[0] == {"coverage": 0.5, "n": 2, "accuracy": 1.0, "min_confidence": 0.8}
    assert rows[1]["accuracy"] == 0.75


def test_report_counts_per_class_and_confusion():
    eye = np.eye(3, dtype=bool)
    true = eye[[0, 0, 1, 2]]
    pred = eye[[0, 1, 1, 2]]
    report = evaluate_predictions(true, pred, np.array([0.9, 0.6, 0.8, 0.7]), ["a", "b", "c"], multi_label=False)
    assert report["accuracy"] == 0.75
    assert report["per_class"]["a"] == {"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2}
    assert report["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert abs(report["macro_f1"] - np.mean([2 / 3, 2 / 3, 1.0])) < 1e-12


def test_the_ece_noise_floor_separates_sampling_noise_from_miscalibration():
    rng = np.random.default_rng(3)
    confidence = rng.uniform(0.5, 1.0, 2000)
    floor = ece_noise_floor(confidence)
    # outcomes drawn at the stated confidence: a calibrated model, whose ECE is noise only
    calibrated = [expected_calibration_error(confidence, rng.random(2000) < confidence) for _ in range(40)]
    assert 0.0 < np.median(calibrated) < floor and np.mean(np.array(calibrated) <= floor) >= 0.85
    # ten points over-confident: well above the floor
    assert expected_calibration_error(confidence, rng.random(2000) < confidence - 0.1) > 2 * floor
    # the floor shrinks with the number of items, and is reproducible
    assert ece_noise_floor(rng.uniform(0.5, 1.0, 20000)) < floor / 2
    assert ece_noise_floor(confidence) == floor and ece_noise_floor(np.array([])) == 0.0
    report = evaluate_predictions(np.eye(2, dtype=bool)[[0, 1, 1]], np.eye(2, dtype=bool)[[0, 1, 0]],
                                  np.array([0.9, 0.8, 0.6]), ["a", "b"], multi_label=False)
    assert report["ece_noise_floor"] > 0
