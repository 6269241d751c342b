"""Fusion operators, modality dropout, per-pattern calibration, escalation thresholds, multi-label thresholds."""

import numpy as np
import pytest
import torch

from shared.fusion.calibration import fit_label_thresholds
from shared.fusion.escalation import (
    EscalationTarget,
    escalation_curve,
    threshold_for_accuracy,
    threshold_for_share,
)
from shared.fusion.model import FusionConfig, FusionModel
from shared.fusion.operators import OPERATORS, BlockFusion, hamilton_product
from shared.fusion.training import Signals, TrainingConfig, fit_one, train_fusion


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("dims", [(6,), (6, 10), (6, 10, 4)])
def test_every_operator_has_the_right_shape_and_passes_gradients_to_every_block(operator, dims):
    fusion = BlockFusion(dims, operator, width=8)
    x = torch.randn(5, sum(dims), requires_grad=True)
    out = fusion(x)
    assert out.shape == (5, fusion.out_dim)
    assert fusion.out_dim == (8 * len(dims) if operator == "concat" else 8)
    out.square().sum().backward()
    for start, d in zip(np.cumsum((0,) + dims[:-1]), dims):
        assert x.grad[:, start:start + d].abs().sum() > 0, f"block at {start} gets no gradient"
    for name, p in fusion.named_parameters():
        assert p.grad is not None, name


def test_raw_concat_is_the_identity_and_other_operators_need_a_width():
    x = torch.randn(3, 7)
    assert torch.equal(BlockFusion((3, 4), "concat", 0)(x), x)
    with pytest.raises(ValueError, match="needs a projection width"):
        BlockFusion((3, 4), "sum", 0)
    with pytest.raises(ValueError, match="divisible by 4"):
        BlockFusion((3, 4), "quaternion", 6)
    with pytest.raises(ValueError, match="not one of"):
        BlockFusion((3, 4), "outer", 8)


def _hamilton_reference(p, q):
    """Textbook quaternion product of (a, b, c, d) tuples."""
    a1, b1, c1, d1 = p
    a2, b2, c2, d2 = q
    return (a1 * a2 - b1 * b2 - c1 * c2 - d1 * d2,
            a1 * b2 + b1 * a2 + c1 * d2 - d1 * c2,
            a1 * c2 - b1 * d2 + c1 * a2 + d1 * b2,
            a1 * d2 + b1 * c2 - c1 * b2 + d1 * a2)


def test_quaternion_matches_the_hamilton_product():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 8)), rng.normal(size=(3, 8))  # 3 rows of 2 quaternions each
    got = hamilton_product(torch.tensor(a), torch.tensor(b)).numpy()
    for row in range(3):
        for k in range(2):  # quaternion k = components (k, 2+k, 4+k, 6+k): parts are contiguous chunks
            p = tuple(a[row, part * 2 + k] for part in range(4))
            q = tuple(b[row, part * 2 + k] for part in range(4))
            expected = _hamilton_reference(p, q)
            assert np.allclose([got[row, part * 2 + k] for part in range(4)], expected)
    # i * j = k and j * i = -k
    i, j = torch.tensor([0.0, 1, 0, 0]), torch.tensor([0.0, 0, 1, 0])
    assert torch.equal(hamilton_product(i, j), torch.tensor([0.0, 0, 0, 1]))
    assert torch.equal(hamilton_product(j, i), torch.tensor([0.0, 0, 0, -1]))


def test_modality_dropout_really_hides_present_sources(monkeypatch):
    rng = np.random.default_rng(0)
    n = 400
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, 2, n)
    signals = Signals(x, rng.random((n, 2, 2)).astype(np.float32), np.ones((n, 2), dtype=np.float32))
    seen = []
    original = FusionModel.forward

    def recording(self, features, llm_scores=None, llm_mask=None):
        if self.training:
            seen.append(llm_mask.clone())
        return original(self, features, llm_scores, llm_mask)

    monkeypatch.setattr(FusionModel, "forward", recording)
    config = FusionConfig(block_dims=(4,), n_classes=2, llm_sources=("a", "b"), hidden=0)
    for p, low, high in ((0.5, 0.4, 0.6), (0.0, 0.0, 0.0)):
        seen.clear()
        fit_one(config, signals, y, signals, y, TrainingConfig(max_epochs=3, patience=5, llm_dropout=p))
        hidden = 1 - torch.cat(seen).mean().item()
        assert low <= hidden <= high, (p, hidden)


def test_temperature_is_fitted_per_signal_pattern_and_llm_signal_is_used():
    rng = np.random.default_rng(1)
    n, c = 900, 3
    y = rng.integers(0, c, n)
    x = (rng.normal(size=(n, 6)) + np.eye(c)[y] @ rng.normal(size=(c, 6)) * 0.4).astype(np.float32)
    llm = np.full((n, 1, c), 0.1, dtype=np.float32)
    llm[np.arange(n), 0, y] = 0.8  # a strong, honest LLM
    mask = (rng.random((n, 1)) > 0.2).astype(np.float32)
    trained = train_fusion(Signals(x, llm, mask), y, labels=["a", "b", "c"], multi_label=False, llm_sources=("api",),
                           config=TrainingConfig(max_epochs=60))
    assert set(trained.temperatures) == {"encoder", "api"}
    patterns = trained.validation["patterns"]
    assert patterns["api"]["accuracy_calibrated"] > patterns["encoder"]["accuracy_calibrated"] + 0.1
    assert patterns["api"]["accuracy_calibrated"] > 0.9


def test_share_threshold_never_escalates_more_than_asked_even_with_ties():
    confidence = np.array([0.5, 0.5, 0.5, 0.6, 0.7, 0.8, 0.9, 0.9, 0.95, 0.99])
    for share in np.linspace(0, 1, 21):
        t = threshold_for_share(confidence, share)
        escalated = (confidence < t).mean()
        assert escalated <= share + 1e-9
    assert (confidence < threshold_for_share(confidence, 0.5)).mean() == 0.5
    assert (confidence < threshold_for_share(confidence, 0.2)).mean() == 0.0  # three tied at 0.5: all stay
    assert (confidence < threshold_for_share(confidence, 1.0)).all()


def test_accuracy_threshold_keeps_items_at_the_target_accuracy():
    rng = np.random.default_rng(2)
    confidence = rng.random(2000)
    correct = rng.random(2000) < confidence  # calibrated by construction
    for target in (0.6, 0.8, 0.95):
        t = threshold_for_accuracy(confidence, correct, target)
        kept = confidence >= t
        assert correct[kept].mean() >= target
        # the lowest such threshold: keeping one more group would miss the target
        below = confidence[confidence < t]
        if len(below):
            wider = confidence >= below.max()
            assert correct[wider].mean() < target
    assert not (confidence >= threshold_for_accuracy(confidence, np.zeros(2000, bool), 0.5)).any()


def test_escalation_curve_reports_the_trade_off():
    rng = np.random.default_rng(3)
    confidence = rng.random(1000)
    fast = rng.random(1000) < confidence
    fused = np.ones(1000, dtype=bool)
    curve = escalation_curve(confidence, fast, fused, llm_cost_per_item=0.002)
    assert curve[0]["escalated_share"] == 0 and curve[-1]["escalated_share"] == 1
    overall = [p["overall_accuracy"] for p in curve]
    assert overall == sorted(overall) and overall[-1] == 1.0
    assert curve[10]["llm_cost_per_1000"] == pytest.approx(1.0, rel=0.01)
    with pytest.raises(ValueError, match="exactly one"):
        EscalationTarget(share=0.2, kept_accuracy=0.9)


def test_multi_label_thresholds_maximise_each_class_f1():
    rng = np.random.default_rng(4)
    n = 600
    truth = np.zeros((n, 3), dtype=np.float32)
    truth[:, 0] = rng.random(n) < 0.5
    truth[:, 1] = rng.random(n) < 0.1
    probs = np.zeros((n, 3))
    probs[:, 0] = np.where(truth[:, 0] > 0, rng.uniform(0.55, 1.0, n), rng.uniform(0.0, 0.6, n))
    probs[:, 1] = np.where(truth[:, 1] > 0, rng.uniform(0.2, 0.4, n), rng.uniform(0.0, 0.2, n))  # under-confident
    probs[:, 2] = rng.random(n)  # class 2 never occurs
    thresholds = fit_label_thresholds(probs, truth)
    assert 0.55 <= thresholds[0] <= 0.6
    assert thresholds[1] == pytest.approx(0.2)
    assert thresholds[2] == 0.5
