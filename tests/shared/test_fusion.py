import json

import numpy as np
import pytest
import torch

from shared.encoders.spec import EncoderSpec
from shared.errors import ArtifactError
from shared.fusion.artifact import ClassifierArtifact, load_artifact, save_artifact
from shared.fusion.calibration import fit_temperature
from shared.metrics import expected_calibration_error
from shared.fusion.model import FusionConfig, FusionModel
from shared.fusion.predict import decide
from shared.fusion.training import Candidate, TrainingConfig, split_train_validation, train_fusion


def blobs(n_per_class: int, n_classes: int = 3, dim: int = 16, spread: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (n_classes, dim))
    x = np.concatenate([centres[c] + rng.normal(0, spread, (n_per_class, dim)) for c in range(n_classes)])
    y = np.repeat(np.arange(n_classes), n_per_class)
    return x.astype(np.float32), y.astype(np.int64)


def test_llm_places_exist_and_a_missing_source_is_ignored():
    model = FusionModel(FusionConfig(block_dims=(8,), n_classes=3, llm_sources=("vllm", "api"), hidden=16)).eval()
    features = torch.randn(4, 8)
    # Given LLM scores that are all marked missing
    scores, mask = torch.rand(4, 2, 3), torch.zeros(4, 2)
    # Then they cannot change the output, whatever their values
    assert torch.allclose(model(features, scores, mask), model(features, torch.rand(4, 2, 3), mask))
    assert torch.allclose(model(features, scores, mask), model(features))
    # And a present source does change it
    assert not torch.allclose(model(features, scores, torch.ones(4, 2)), model(features))


def test_training_learns_separable_classes_and_reports_candidates():
    x, y = blobs(60)
    trained = train_fusion(x, y, labels=["a", "b", "c"], multi_label=False, config=TrainingConfig(max_epochs=60),
                           candidates=(Candidate(hidden=0), Candidate(hidden=32)))
    assert trained.validation["accuracy_calibrated"] >= 0.95
    assert [c["hidden"] for c in trained.candidates] == [0, 32]
    # The encoder-only temperature is the one minimising the (Laplace-smoothed) NLL of the chosen
    # model's logits on the validation split: found again here by a plain grid search over T.
    _, val_idx = split_train_validation(y, val_fraction=TrainingConfig().val_fraction, seed=TrainingConfig().seed)
    with torch.no_grad():
        logits = trained.model(torch.from_numpy(x[val_idx])).double().numpy()
    n = len(val_idx)
    eps = 1.0 / (n + 2)
    soft = np.eye(3)[y[val_idx]] * (1 - eps) + eps / 3

    def nll(t: float) -> float:
        z = logits / t
        log_p = z - z.max(1, keepdims=True)
        log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
        return float(-(soft * log_p).sum(1).mean())

    grid = np.exp(np.linspace(np.log(1e-2), np.log(1e2), 4001))
    best = float(grid[np.argmin([nll(t) for t in grid])])
    temperature = trained.temperatures["encoder"]
    assert temperature == pytest.approx(best, rel=5e-3)
    assert nll(temperature) <= nll(best) + 1e-9
    assert trained.validation["temperature"] == temperature


def test_validation_split_is_stratified_and_disjoint():
    y = np.array([0] * 50 + [1] * 10 + [2] * 2)
    train, val = split_train_validation(y, val_fraction=0.2, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(y)
    assert sorted(np.bincount(y[val]).tolist()) == [1, 2, 10]


def test_temperature_scaling_lowers_ece_of_an_overconfident_model():
    rng = np.random.default_rng(0)
    n, c = 4000, 4
    true_logits = rng.normal(0, 1.5, (n, c))
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(c, p=p) for p in probs])
    overconfident = true_logits * 4.0  # the right ranking, far too sharp
    t = fit_temperature(torch.tensor(overconfident), torch.tensor(y), multi_label=False)
    before = decide(overconfident, multi_label=False)
    after = decide(overconfident / t, multi_label=False)
    ece = lambda d: expected_calibration_error(d.confidence, d.label_matrix.argmax(1) == y)  # noqa: E731
    assert 3.0 < t < 5.5
    assert ece(after) < ece(before) / 3


def test_temperature_does_not_collapse_on_a_small_perfect_validation_set():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0]] * 10)
    t = fit_temperature(logits, torch.tensor([0, 1] * 10), multi_label=False)
    p = decide(logits.numpy() / t, multi_label=False).confidence
    assert p.max() < 0.99  # 20 right answers do not justify certainty


def test_multi_label_decision_keeps_at_least_one_label():
    d = decide(np.array([[-3.0, -2.0, -4.0], [2.0, 1.0, -1.0]]), multi_label=True)
    assert d.label_matrix.tolist() == [[False, True, False], [True, True, False]]
    # confidence = the least certain per-class decision: max(p, 1 - p) of the logit nearest 0
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    assert d.confidence == pytest.approx([sigmoid(2.0), sigmoid(1.0)])  # row 0: logit -2; row 1: logits 1 and -1
    assert d.probabilities == pytest.approx(sigmoid(np.array([[-3.0, -2.0, -4.0], [2.0, 1.0, -1.0]])))


def test_multi_label_training():
    x, y = blobs(50, n_classes=3)
    targets = np.eye(3, dtype=np.float32)[y]
    targets[y == 0, 1] = 1.0  # class a always comes with b
    trained = train_fusion(x, targets, labels=["a", "b", "c"], multi_label=True, config=TrainingConfig(max_epochs=60))
    assert trained.validation["accuracy_calibrated"] >= 0.9


def _artifact():
    x, y = blobs(20, dim=8)
    trained = train_fusion(x, y, labels=["a", "b", "c"], multi_label=False, config=TrainingConfig(max_epochs=5))
    return x, ClassifierArtifact(model=trained.model, temperatures=trained.temperatures, labels=trained.labels,
                                 multi_label=False, encoders=(EncoderSpec(model="m"),), metrics={"k": 1})


def test_artifact_round_trip_is_bit_exact(tmp_path):
    x, artifact = _artifact()
    sha = save_artifact(tmp_path / "v1", artifact)
    loaded = load_artifact(tmp_path / "v1", expected_sha256=sha)
    for key, value in artifact.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key])
    assert np.array_equal(artifact.decide(x).probabilities, loaded.decide(x).probabilities)
    assert (loaded.labels, loaded.encoders, loaded.temperatures) == (artifact.labels, artifact.encoders, artifact.temperatures)
    with pytest.raises(ArtifactError, match="never overwritten"):
        save_artifact(tmp_path / "v1", artifact)


def test_corrupt_missing_or_mismatched_artifacts_are_named(tmp_path):
    x, artifact = _artifact()
    sha = save_artifact(tmp_path / "v1", artifact)
    weights = tmp_path / "v1" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="corrupt or was replaced"):
        load_artifact(tmp_path / "v1", expected_sha256=sha)
    with pytest.raises(ArtifactError, match="cannot be loaded"):
        load_artifact(tmp_path / "v1")
    config = tmp_path / "v1" / "config.json"
    config.write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="format"):
        load_artifact(tmp_path / "v1")
    with pytest.raises(ArtifactError, match="model.safetensors is missing"):
        weights.unlink()
        load_artifact(tmp_path / "v1")
    with pytest.raises(ArtifactError, match=r"expects \[N, 8\]"):
        artifact.decide(np.zeros((2, 5), dtype=np.float32))


def test_the_search_never_sees_the_calibration_rows_and_calibration_uses_only_them():
    from shared.fusion.search import MIN_CALIBRATION_ROWS, choose, split_validation

    x, y = blobs(200, dim=8, spread=2.5)
    train_idx, val_idx = split_train_validation(y, val_fraction=0.5, seed=0)
    y_train, y_val = y[train_idx], y[val_idx]
    config = TrainingConfig(max_epochs=15, calibration_share=0.5)
    selection, calibration = split_validation(y_val, config)
    assert set(selection).isdisjoint(calibration) and len(selection) + len(calibration) == len(y_val)
    assert len(calibration) >= MIN_CALIBRATION_ROWS
    # Given calibration rows whose features are noise, only the calibration can notice them:
    # the search (probes, candidates, early stopping) must be blind to them
    noisy = x[val_idx].copy()
    noisy[calibration] = np.random.default_rng(1).normal(0, 3, noisy[calibration].shape)

    def run(val_x):
        features = [{1: [x[train_idx], val_x], 2: [x[train_idx] * 0.5, val_x * 0.5]}]
        return choose(features, y_train, y_val, labels=["a", "b", "c"], multi_label=False, auto=True, names=["e"],
                      fusion="concat", width=8, training=config)

    honest, fooled = run(x[val_idx]), run(noisy)
    assert [r["val_score"] for r in honest.rows] == [r["val_score"] for r in fooled.rows]
    assert honest.blocks == fooled.blocks
    # Then calibration and the reported validation figure come from the calibration rows alone
    assert fooled.trained.validation["n"] == len(calibration)
    assert fooled.trained.validation["accuracy_calibrated"] < honest.trained.validation["accuracy_calibrated"] - 0.3
    assert fooled.trained.temperatures["encoder"] > 2 * honest.trained.temperatures["encoder"]


def test_a_small_validation_set_is_not_split():
    from shared.fusion.search import split_validation

    y_val = np.repeat(np.arange(3), 20)
    selection, calibration = split_validation(y_val, TrainingConfig())
    assert list(selection) == list(calibration) == list(range(60))
    selection, calibration = split_validation(np.repeat(np.arange(3), 200), TrainingConfig(calibration_share=0))
    assert list(selection) == list(calibration)


def test_self_training_pseudo_labels_only_what_calibration_says_is_sure():
    from shared.fusion.self_training import pseudo_label, self_train

    x, y = blobs(400, dim=8, spread=3.0, seed=3)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    lab, sel, cal, unl = order[:90], order[90:240], order[240:390], order[390:]
    config = TrainingConfig(max_epochs=30)
    candidate = Candidate(hidden=0)
    trained = train_fusion(x[lab], y[lab], labels=["a", "b", "c"], multi_label=False, candidates=(candidate,),
                           config=config, validation=(x[sel], y[sel]), calibration=(x[cal], y[cal]))
    assert trained.validation["n"] == len(cal)  # calibrated on the calibration rows, not the selection rows
    # Given a 0.95 target, the cut keeps unlabelled rows about that accurate, and fewer than all of them
    pseudo = pseudo_label(trained, x[unl], (x[cal], y[cal]), target_accuracy=0.95)
    assert 0 < len(pseudo.targets) < len(unl) and pseudo.offered == len(unl)
    kept = np.array([np.flatnonzero((x[unl] == row).all(1))[0] for row in pseudo.features])
    assert np.mean(pseudo.targets == y[unl][kept]) >= 0.9
    # A stricter target keeps fewer rows
    assert len(pseudo_label(trained, x[unl], (x[cal], y[cal]), target_accuracy=0.99).targets) <= len(pseudo.targets)
    # And the refit is kept only when its selection score does not fall
    refit, report = self_train(trained, candidate, (x[lab], y[lab]), (x[sel], y[sel]), (x[cal], y[cal]), x[unl],
                               block_dims=(8,), config=config)
    assert report["pseudo_labelled"] == len(pseudo.targets)
    assert report["kept"] == (report["selection_score_after"] >= report["selection_score_before"])
    assert (refit is trained) == (not report["kept"])


def test_an_ensemble_averages_its_members_logits_and_survives_the_artifact(tmp_path):
    from shared.fusion.model import merge_members

    x, y = blobs(40, dim=8, spread=2.0)
    tr, va = split_train_validation(y, val_fraction=0.25, seed=0)
    singles = [train_fusion(x[tr], y[tr], labels=["a", "b", "c"], multi_label=False, candidates=(Candidate(hidden=16),),
                            config=TrainingConfig(max_epochs=5, seed=seed), validation=(x[va], y[va])).model
               for seed in (0, 1, 2)]
    merged = merge_members(singles)
    features = torch.from_numpy(x)
    with torch.no_grad():
        expected = torch.stack([m(features) for m in singles]).mean(0)
        assert torch.allclose(merged(features), expected, atol=1e-6)
        assert not torch.allclose(singles[0](features), singles[1](features))  # the seeds made different networks
    # A one-network model keeps the weight names artifacts were always saved with
    assert not any(k.startswith("extra_members") for k in singles[0].state_dict())
    artifact = ClassifierArtifact(model=merged, temperatures={"encoder": 1.3}, labels=["a", "b", "c"],
                                  multi_label=False, encoders=(EncoderSpec(model="m"),))
    loaded = load_artifact(tmp_path / "v1", expected_sha256=save_artifact(tmp_path / "v1", artifact))
    assert loaded.model.config.members == 3
    assert np.array_equal(artifact.decide(x).probabilities, loaded.decide(x).probabilities)
    with pytest.raises(ValueError, match="one-network models"):
        merge_members([merged, singles[0]])
    other_rows = train_fusion(x, y, labels=["a", "b", "c"], multi_label=False, candidates=(Candidate(hidden=16),),
                              config=TrainingConfig(max_epochs=2)).model
    with pytest.raises(ValueError, match="same training rows"):
        merge_members([singles[0], other_rows])


def test_training_an_ensemble_fits_the_chosen_candidate_once_per_seed():
    from shared.fusion.search import choose

    x, y = blobs(200, dim=8, spread=2.5)
    train_idx, val_idx = split_train_validation(y, val_fraction=0.5, seed=0)
    features = [{1: [x[train_idx], x[val_idx]], 2: [x[train_idx] * 0.5, x[val_idx] * 0.5]}]
    kwargs = dict(labels=["a", "b", "c"], multi_label=False, auto=True, names=["e"], fusion="concat", width=8)
    single = choose(features, y[train_idx], y[val_idx], training=TrainingConfig(max_epochs=10, ensemble=1), **kwargs)
    widened = choose(features, y[train_idx], y[val_idx], training=TrainingConfig(max_epochs=10, ensemble=3), **kwargs)
    assert single.trained.model.config.members == 1 and widened.trained.model.config.members == 3
    assert widened.blocks == single.blocks  # the search itself compares single networks
    chosen = [r for r in widened.rows if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["members"] == 3 and "3 seeds averaged" in chosen[0]["name"]
    assert widened.trained.validation["n"] == single.trained.validation["n"]  # calibrated on the same rows
    # the search's winner is the first member, not fitted a second time
    members_state = widened.trained.model.state_dict()
    assert all(torch.equal(members_state[k], v) for k, v in single.trained.model.state_dict().items())
    with pytest.raises(ValueError, match="ensemble"):
        TrainingConfig(ensemble=0)
