"""AutoFusionClassifier end to end on tiny random models: layers, fusion, LLM sources, fine-tuning,
escalation, persistence, registry, and the `fusionq train / layers / evaluate` commands."""

import json

import numpy as np
import pytest
import torch

from shared.service.autofusion import AutoFusionClassifier
from shared.textio import as_labelled
from shared.cli import main
from shared.db.engine import session_for
from shared.db.models import LlmScore
from shared.encoders.finetune import FinetuneConfig
from shared.encoders.hf import encode_features
from shared.errors import ConfigError, InputError
from shared.fusion.escalation import EscalationTarget
from shared.fusion.training import TrainingConfig
from tests.conftest import make_topic_texts, write_csv

FAST = TrainingConfig(max_epochs=15, patience=3)


def topics(n_per_class=16, seed=0):
    texts, labels = make_topic_texts(n_per_class, seed=seed)
    return texts, labels


def test_defaults_infer_labels_and_choose_layers_and_fusion_on_validation(sqlite_settings, tiny_bert_path):
    clf = AutoFusionClassifier(encoders=tiny_bert_path, settings=sqlite_settings, training=FAST).fit(topics())
    report = clf.report_
    # Labels come from the data, single-label, no LLM: an encoder-only fit that says so
    assert clf.artifact_.labels == sorted(set(topics()[1])) and not clf.artifact_.multi_label
    assert report["llm"] is None and clf.artifact_.llm_sources == ()
    # Every hidden layer was probed on validation, and block sets of 1, 2 and 3 best layers were tried
    probed = [r["layer"] for r in report["layers"][0]["rows"]]
    assert probed == [1, 2]  # the tiny BERT has 2 layers
    assert {c["n_blocks"] for c in report["candidates"]} == {1, 2}
    operators = {c["operator"] for c in report["candidates"] if c["n_blocks"] == 2}
    assert {"concat", "sum", "hadamard", "quaternion", "moe", "moe_residual"} <= operators
    chosen = [c for c in report["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and chosen[0]["members"] == 5  # the default ensemble of the best single network
    singles = [c for c in report["candidates"] if "members" not in c]
    best = max(c["val_score"] for c in singles)
    shape = lambda c: (c["blocks"], c["operator"], c["width"], c["hidden"])  # noqa: E731
    assert shape(chosen[0]) in {shape(c) for c in singles if c["val_score"] == best}
    test_texts, test_labels = topics(8, seed=9)
    assert np.mean(np.array(clf.predict(test_texts)) == np.array(test_labels)) > 0.6
    proba = clf.predict_proba(test_texts)
    assert proba.shape == (len(test_texts), len(clf.artifact_.labels)) and np.allclose(proba.sum(1), 1)
    with pytest.raises(ConfigError, match="needs LLM sources"):
        clf.predict(test_texts, mode="auto")
    with pytest.raises(InputError, match="text 1: empty"):
        clf.predict(["fine", "  "])


def test_save_load_round_trips_bit_exactly(sqlite_settings, tiny_bert_path, tmp_path):
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=(1, 2), fusion="quaternion", width=8,
                               settings=sqlite_settings, training=FAST).fit(topics())
    assert clf.artifact_.model.config.operator == "quaternion"
    clf.save(tmp_path / "clf")
    loaded = AutoFusionClassifier.load(tmp_path / "clf", settings=sqlite_settings)
    for key, value in clf.artifact_.model.state_dict().items():
        assert torch.equal(value, loaded.artifact_.model.state_dict()[key]), key
    texts = topics(4, seed=5)[0]
    assert np.array_equal(clf.predict_proba(texts), loaded.predict_proba(texts))
    assert loaded.artifact_.escalation == json.loads(json.dumps(clf.artifact_.escalation))
    assert loaded.artifact_.temperatures == clf.artifact_.temperatures


def test_escalation_threshold_meets_its_target_on_validation(sqlite_settings, tiny_bert_path):
    for target in (EscalationTarget(share=0.3), EscalationTarget(share=None, kept_accuracy=0.9)):
        clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, settings=sqlite_settings, training=FAST,
                                   escalation=target).fit(topics(20))
        esc = clf.artifact_.escalation
        n_val = esc["validation_size"]
        assert n_val == 9  # 20 texts per class, 15% of each class (3) held out for validation
        if target.share is not None:
            # the most items that stay within 30%: floor(0.3 * 9) = 2 of 9 (confidences are distinct floats)
            assert esc["validation_escalated_share"] == 2 / 9
            assert esc["validation_kept_accuracy"] is not None and esc["validation_kept_accuracy"] >= 0.9
        else:
            assert esc["validation_kept_accuracy"] is not None and esc["validation_kept_accuracy"] >= 0.9
            # the fewest escalations that reach the target: with 21 shares in steps of 0.05 < 1/9 the curve
            # has a point for every count of escalated items, so its first point meeting 0.9 is that count
            meeting = [c["escalated_share"] for c in esc["curve"]
                       if c["kept_accuracy"] is not None and c["kept_accuracy"] >= 0.9]
            assert esc["validation_escalated_share"] == min(meeting)
        assert len(esc["curve"]) == 21 and esc["curve"][0]["escalated_share"] == 0.0
        kept_n, acc = esc["validation_kept_n"], esc["validation_kept_accuracy"]
        assert kept_n == round(n_val * (1 - esc["validation_escalated_share"]))
        assert esc["validation_kept_accuracy_se"] == pytest.approx((acc * (1 - acc) / kept_n) ** 0.5)
        assert clf.report_["escalation"]["threshold"] == esc["threshold"] and "curve" not in clf.report_["escalation"]


def test_multi_label_fit_learns_per_class_thresholds(sqlite_settings, tiny_bert_path):
    texts, labels = topics(20)
    multi = [[label] + (["news"] if i % 3 == 0 else []) for i, label in enumerate(labels)]
    data = as_labelled((texts, multi))
    assert data.multi_label
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, settings=sqlite_settings, training=FAST).fit(data)
    assert clf.artifact_.multi_label and len(clf.artifact_.label_thresholds) == len(clf.artifact_.labels)
    predicted = clf.predict(texts[:6])
    assert all(isinstance(p, list) and p for p in predicted)


def test_fit_with_a_tiny_llm_uses_the_cache_and_serves_every_mode(sqlite_settings, tiny_bert_path, tiny_causal_lm_path):
    llm = f"local=hf:{tiny_causal_lm_path}"
    data = topics(12)
    options = dict(encoders=tiny_bert_path, llms=[llm], layers=-1, settings=sqlite_settings, training=FAST,
                   escalation=EscalationTarget(share=0.5))
    first = AutoFusionClassifier(**options).fit(data)
    n = len(data[0])
    assert first.report_["llm"]["calls"] == n and first.report_["llm"]["questions"] == n
    assert set(first.artifact_.temperatures) == {"encoder", "local"}
    assert first.artifact_.llm_specs == {"local": f"hf:{tiny_causal_lm_path}"}
    # A second fit asks the LLM nothing new
    second = AutoFusionClassifier(**options).fit(data)
    assert second.report_["llm"]["calls"] == 0 and second.report_["llm"]["spent_usd"] == 0
    with session_for(sqlite_settings.effective_database_url) as session:
        assert session.query(LlmScore).count() == n
    texts = topics(6, seed=7)[0]
    fast = first.predict_batch(texts, "fast")
    full = first.predict_batch(texts, "full")
    auto = first.predict_batch(texts, "auto")
    assert not fast.escalated.any() and full.escalated.all()
    assert full.llm_questions == len(texts) and full.llm_mask.sum() == len(texts)
    escalated = fast.decision.confidence < first.artifact_.escalation["threshold"]
    assert np.array_equal(auto.escalated, escalated)
    # Auto = full where escalated, fast elsewhere
    assert np.allclose(auto.decision.probabilities[escalated], full.decision.probabilities[escalated])
    assert np.allclose(auto.decision.probabilities[~escalated], fast.decision.probabilities[~escalated])


def test_fine_tuning_picks_its_epoch_on_the_selection_rows_only(sqlite_settings, tiny_bert_path, monkeypatch):
    import shared.service.autofusion as autofusion

    seen = []
    real = autofusion.finetune_all
    monkeypatch.setattr(autofusion, "finetune_all",
                        lambda specs, texts, y, val_texts, y_val, **kw: seen.append(list(val_texts))
                        or real(specs, texts, y, val_texts, y_val, **kw))
    dev_texts, dev_labels = topics(70, seed=3)  # 210 rows: split in two halves
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, finetune=FinetuneConfig(epochs=1, batch_size=16),
                               settings=sqlite_settings, training=FAST).fit(topics(10), (dev_texts, dev_labels))
    report = clf.report_
    assert len(seen[0]) == report["n_selection"] < len(dev_texts) and report["n_calibration"] > 0
    # exactly the search's half: the calibration half, which sets the temperature and the reported
    # figure, had no say in the epoch
    from shared.fusion.search import split_validation

    y_val = np.array([clf.artifact_.labels.index(label) for label in dev_labels])
    selection, calibration = split_validation(y_val, FAST)
    assert seen[0] == [dev_texts[i] for i in selection] and len(calibration) == report["n_calibration"]


def test_full_fine_tuning_bundles_the_backbone_in_the_artifact(sqlite_settings, tiny_bert_path, tmp_path):
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, finetune=FinetuneConfig(epochs=1, batch_size=8),
                               settings=sqlite_settings, training=FAST).fit(topics(10))
    assert clf.report_["finetune"][0]["history"][0]["epoch"] == 1
    # the report names the tuned backbone by its origin, not by the temporary folder it was tuned in
    assert clf.report_["chosen"]["layers"] == {f"{tiny_bert_path}, fine-tuned": [-1]}
    clf.save(tmp_path / "ft")
    assert (tmp_path / "ft" / "backbones" / "0" / "config.json").is_file()
    loaded = AutoFusionClassifier.load(tmp_path / "ft", settings=sqlite_settings)
    assert loaded.artifact_.encoders[0].model == str((tmp_path / "ft" / "backbones" / "0").resolve())
    texts = topics(3, seed=4)[0]
    assert np.allclose(clf.predict_proba(texts), loaded.predict_proba(texts), atol=1e-5)
    # The backbone really changed: its features differ from the original model's
    base = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, settings=sqlite_settings)._base_spec(tiny_bert_path)
    assert not np.allclose(encode_features([base], texts), clf.features(texts))


def test_self_training_with_fine_tuning_tunes_the_backbone_again_on_the_pseudo_labels(
        sqlite_settings, tiny_bert_path, monkeypatch):
    import shared.service.autofusion as autofusion

    sizes, real = [], autofusion.finetune_all
    monkeypatch.setattr(autofusion, "finetune_all",
                        lambda specs, texts, y, *a, **kw: sizes.append((len(texts), len(y), kw["out_dir"].name))
                        or real(specs, texts, y, *a, **kw))
    unlabeled = topics(12, seed=5)[0]
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, finetune=FinetuneConfig(epochs=1, batch_size=8),
                               settings=sqlite_settings, training=FAST).fit(topics(10), unlabeled=unlabeled)
    st = clf.report_["self_training"]
    n_train = clf.report_["n_train"]
    # round one on the labelled rows, round two from the base on labelled + pseudo-labelled rows
    assert sizes == [(n_train, n_train, "first"), (n_train + st["pseudo_labelled"],) * 2 + ("second",)]
    assert st["offered"] == len(unlabeled) and st["backbones"].startswith("fine-tuned again")
    assert st["kept"] == (st["selection_score_after"] >= st["selection_score_before"])
    kept_round = "second" if st["kept"] else "first"
    assert f"/{kept_round}/" in clf.artifact_.encoders[0].model  # the served backbone is the kept round's
    from pathlib import Path

    discarded = Path(clf._workdir.name) / ("first" if st["kept"] else "second")
    assert not discarded.exists()  # the other round's backbone is removed at once
    assert clf.report_["chosen"]["val_score"] == max(st["selection_score_after"], st["selection_score_before"])
    assert ("first_round" if st["kept"] else "second_round") in st
    assert clf.predict(unlabeled[:3])


def test_lora_fine_tunes_a_decoder_and_4bit_needs_cuda(sqlite_settings, tiny_decoder_path):
    clf = AutoFusionClassifier(encoders=tiny_decoder_path, layers=-1, settings=sqlite_settings, training=FAST,
                               finetune=FinetuneConfig(method="lora", epochs=1, batch_size=8)).fit(topics(8))
    assert clf.artifact_.encoders[0].pooling == "last"  # a decoder LLM is read at its last token
    assert clf.report_["finetune"][0]["method"] == "lora"
    with pytest.raises(ConfigError, match="4-bit loading needs a CUDA GPU"):
        AutoFusionClassifier(encoders=tiny_decoder_path, layers=-1, settings=sqlite_settings,
                             finetune=FinetuneConfig(method="lora", load_in_4bit=True)).fit(topics(4))


def test_bad_inputs_are_refused_with_the_reason(sqlite_settings, tiny_bert_path):
    with pytest.raises(ConfigError, match="fusion 'outer'"):
        AutoFusionClassifier(fusion="outer", settings=sqlite_settings)
    with pytest.raises(ConfigError, match="layers 'best'"):
        AutoFusionClassifier(layers="best", settings=sqlite_settings)
    with pytest.raises(InputError, match="3 texts but 2 labels"):
        AutoFusionClassifier(settings=sqlite_settings).fit((["a", "b", "c"], ["x", "y"]))
    with pytest.raises(InputError, match="empty or whitespace-only"):
        AutoFusionClassifier(encoders=tiny_bert_path, settings=sqlite_settings).fit((["a", " ", "c"], ["x", "y", "x"]))
    with pytest.raises(ConfigError, match="not fitted"):
        AutoFusionClassifier(settings=sqlite_settings).predict(["a"])


def test_cli_train_layers_and_evaluate_write_their_reports(sqlite_settings, tiny_bert_path, tiny_causal_lm_path,
                                                          tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FUSIONQ_HOME", str(sqlite_settings.home))
    from shared.settings import get_settings

    get_settings.cache_clear()
    texts, labels = topics(14)
    train_csv = write_csv(tmp_path / "train.csv", ["text", "label"], list(zip(texts, labels)))
    test_texts, test_labels = topics(6, seed=11)
    test_csv = write_csv(tmp_path / "test.csv", ["text", "label"], list(zip(test_texts, test_labels)))

    assert main(["-q", "layers", "--data", str(train_csv), "--encoder", tiny_bert_path,
                 "--out-dir", str(tmp_path / "layers")]) == 0
    for name in ("layers.csv", "layers.json", "layers.md", "layers.png"):
        assert (tmp_path / "layers" / name).stat().st_size > 0
    assert (tmp_path / "layers" / "layers.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()  # the layers table: train's JSON is read alone below

    assert main(["-q", "train", "--json", "--data", str(train_csv), "--name", "t", "--encoder", tiny_bert_path,
                 "--layers", "-1", "--llm", f"local=hf:{tiny_causal_lm_path}", "--escalate-share", "0.5"]) == 0
    out = capsys.readouterr().out
    trained = json.loads(out)
    assert trained["classifier"] == "t@1" and trained["llm"]["calls"] > 0

    assert main(["-q", "evaluate", "--classifier", "t", "--data", str(test_csv),
                 "--out-dir", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    assert set(report["modes"]) == {"fast", "auto", "full", "llm:local"}
    assert report["modes"]["fast"]["llm_questions_per_1000"] == 0
    assert report["modes"]["full"]["llm_questions_per_1000"] == 1000
    # auto escalates exactly the test texts whose fast-path confidence is below the learned threshold
    registered = AutoFusionClassifier.from_registry("t", settings=sqlite_settings)
    fast_confidence = registered.predict_batch(test_texts, "fast").decision.confidence
    n_escalated = int((fast_confidence < registered.artifact_.escalation["threshold"]).sum())
    assert report["escalation"]["threshold"] == registered.artifact_.escalation["threshold"]
    assert report["modes"]["auto"]["escalated_share"] == pytest.approx(n_escalated / len(test_texts))
    assert report["modes"]["auto"]["llm_questions_per_1000"] == round(n_escalated * 1000 / len(test_texts), 1)
    for name in ("comparison.md", "coverage.png", "escalation.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    get_settings.cache_clear()

