"""The `fusionq` command as a user runs it: real files in, real files out, clear errors."""

import csv
import json
import math
from pathlib import Path

import pytest

from shared.cli import main
from tests.conftest import write_csv


def _ece(confidence: list[float], correct: list[bool], n_bins: int = 15) -> float:
    """Expected calibration error over bins (k/n, (k+1)/n], written out by hand (bin 0 also takes 0)."""
    bins: dict[int, list[tuple[float, bool]]] = {}
    for c, ok in zip(confidence, correct):
        bins.setdefault(min(max(math.ceil(c * n_bins) - 1, 0), n_bins - 1), []).append((c, ok))
    return sum(len(members) / len(confidence) * abs(sum(ok for _, ok in members) / len(members)
                                                     - sum(c for c, _ in members) / len(members))
               for members in bins.values())


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONQ_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_train_classify_evaluate_round_trip(home, topic_csvs, tiny_bert_path, capsys):
    train_csv, test_csv = topic_csvs
    assert main(["-q", "train", "--json", "--data", str(train_csv), "--name", "topics", "--encoder", tiny_bert_path]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["classifier"] == "topics@1" and trained["labels"] == ["business", "science", "sports"]

    texts = write_csv(home / "texts.csv", ["text"], [["the striker and the coach"], [""], ["profit and revenue"]])
    assert main(["-q", "classify", "--classifier", "topics", "--in", str(texts), "--out", str(home / "p.csv")]) == 0
    rows = list(csv.DictReader((home / "p.csv").open()))
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
    assert rows[1]["error"] == "empty or whitespace-only text"
    assert set(rows[0]) >= {"labels", "confidence", "p_sports", "p_business", "p_science"}

    assert main(["-q", "evaluate", "--classifier", "topics@1", "--data", str(test_csv), "--out-dir", "ev",
                 "--through-service"]) == 0
    report = json.loads((home / "ev" / "metrics.json").read_text())
    assert report["n_texts"] == 30 and report["n_failed"] == 0
    # The same texts classified once more: accuracy and ECE (15 equal-width bins) recomputed from the CSV
    assert main(["-q", "classify", "--classifier", "topics@1", "--in", str(test_csv), "--out", str(home / "t.csv")]) == 0
    truth = [r["label"] for r in csv.DictReader(test_csv.open())]
    predicted = list(csv.DictReader((home / "t.csv").open()))
    correct = [r["labels"] == label for r, label in zip(predicted, truth)]
    confidence = [float(r["confidence"]) for r in predicted]
    assert report["accuracy"] == pytest.approx(sum(correct) / 30)
    assert report["ece"] == pytest.approx(_ece(confidence, correct), abs=1e-5)
    assert [r["coverage"] for r in report["coverage_accuracy"]] == [0.5, 0.7, 0.9, 1.0]
    assert "## Confusion matrix" in (home / "ev" / "report.md").read_text()


def test_errors_name_what_is_wrong_and_exit_2(home, topic_csvs, tiny_bert_path, capsys):
    train_csv, _ = topic_csvs
    assert main(["-q", "classify", "--classifier", "ghost", "--in", str(train_csv), "--out", "p.csv"]) == 2
    assert "no classifier 'ghost'" in capsys.readouterr().err
    main(["-q", "train", "--data", str(train_csv), "--name", "topics", "--encoder", tiny_bert_path])
    unknown = write_csv(home / "u.csv", ["text", "label"], [["x", "sports"], ["y", "weather"]])
    assert main(["-q", "evaluate", "--classifier", "topics", "--data", str(unknown)]) == 2
    assert "label(s) the classifier does not know: 'weather' (data rows 2)" in capsys.readouterr().err
    latin = home / "latin.csv"
    latin.write_bytes("text\ncaf\xe9\n".encode("latin-1"))
    assert main(["-q", "classify", "--classifier", "topics", "--in", str(latin), "--out", "p.csv"]) == 2
    assert "not valid UTF-8" in capsys.readouterr().err


def test_demo_on_the_shipped_sample_with_the_real_minilm(home, capsys):
    """The README's first command: real encoder, real sample, through the Celery tasks."""
    assert main(["-q", "demo"]) == 0
    out = capsys.readouterr().out
    assert "embedded worker, in-memory broker" in out and "| true \\ predicted |" in out
    report = json.loads((home / "fusionq-eval-demo" / "metrics.json").read_text())
    assert report["n_texts"] == 100 and report["n_failed"] == 0
    assert report["accuracy"] >= 0.85


def test_demo_accepts_a_folder_and_refuses_one_without_test_csv(home, topic_csvs, tiny_bert_path, capsys):
    train_csv, _ = topic_csvs
    assert main(["-q", "demo", "--data", str(train_csv.parent), "--name", "t", "--encoder", tiny_bert_path]) == 0
    assert json.loads((home / "fusionq-eval-t" / "metrics.json").read_text())["n_texts"] == 30
    (home / "only").mkdir()
    assert main(["-q", "demo", "--data", str(home / "only")]) == 2
    assert "needs train.csv and test.csv" in capsys.readouterr().err


def test_multi_label_data_trains_and_evaluates_with_micro_f1(home, tiny_bert_path):
    from tests.conftest import make_topic_texts

    texts, labels = make_topic_texts(30, seed=4)
    rows = [[t, f"{label}|news" if i % 2 else label] for i, (t, label) in enumerate(zip(texts, labels))]
    data = write_csv(home / "multi.csv", ["text", "labels"], rows)
    assert main(["-q", "train", "--data", str(data), "--name", "multi", "--encoder", tiny_bert_path]) == 0
    assert main(["-q", "evaluate", "--classifier", "multi", "--data", str(data), "--out-dir", "mev"]) == 0
    report = json.loads((home / "mev" / "comparison.json").read_text())
    assert report["multi_label"] and set(report["modes"]) == {"fast"}  # no LLM source: fast mode only
    assert report["labels"] == ["business", "news", "science", "sports"]
    # micro-F1 recomputed from the label sets the service predicts for the same texts
    assert main(["-q", "classify", "--classifier", "multi", "--in", str(data), "--out", str(home / "mp.csv")]) == 0
    predicted = [set(r["labels"].split("|")) for r in csv.DictReader((home / "mp.csv").open())]
    truth = [set(labels.split("|")) for _, labels in rows]
    tp = sum(len(p & t) for p, t in zip(predicted, truth))
    n_predicted, n_true = sum(map(len, predicted)), sum(map(len, truth))
    assert report["modes"]["fast"]["micro_f1"] == pytest.approx(2 * tp / (n_predicted + n_true))
    exact = sum(p == t for p, t in zip(predicted, truth)) / len(truth)
    assert report["modes"]["fast"]["accuracy"] == pytest.approx(exact)


def test_score_and_llm_stats_and_llm_alone_evaluation(home, capsys):
    from tests.support.fake_openai import FakeOpenAIServer

    texts = write_csv(home / "t.csv", ["text"], [["sports final tonight"], [""], ["science of stars"]])
    labelled = write_csv(home / "l.csv", ["text", "label"],
                         [["sports final", "sports"], ["science news", "science"], ["business deal", "business"]])
    with FakeOpenAIServer() as server:
        spec = f"openai:fake-model@{server.base_url}"
        args = ["-q", "score", "--llm", spec, "--labels", "sports=games,business,science", "--in", str(texts),
                "--out", str(home / "s.csv")]
        assert main(args) == 0
        assert main(args) == 0  # second time: all from the cache
        assert main(["-q", "evaluate", "--llm", spec, "--data", str(labelled), "--out-dir", "lev"]) == 0
    rows = list(csv.DictReader((home / "s.csv").open()))
    assert [r["method"] for r in rows] == ["logprobs", "failed", "logprobs"]
    assert float(rows[0]["p_sports"]) > 0.5 and rows[1]["error"] == "empty or whitespace-only text"
    report = json.loads((home / "lev" / "metrics.json").read_text())
    assert report["accuracy"] == 1.0 and report["llm_methods"]["logprobs"] == 3
    capsys.readouterr()
    assert main(["llm", "stats", "--json"]) == 0
    [stats] = json.loads(capsys.readouterr().out)
    assert stats["model"] == "fake-model" and stats["calls"] == 5 and stats["cache_hits"] == 2


def test_score_refuses_an_unconfigured_source(home, capsys):
    texts = write_csv(home / "t.csv", ["text"], [["x"]])
    assert main(["-q", "score", "--llm", "api", "--labels", "a,b", "--in", str(texts), "--out", "s.csv"]) == 2
    assert "set FUSIONQ_LLM_API" in capsys.readouterr().err


def test_llm_alone_evaluation_where_every_answer_failed_says_nothing_was_scored(home, capsys):
    from tests.support.fake_openai import FakeOpenAIServer

    labelled = write_csv(home / "l.csv", ["text", "label"],
                         [["sports final", "sports"], ["science news", "science"], ["business deal", "business"]])
    with FakeOpenAIServer(default_mode="bad_key") as server:  # answers, but never with a class key
        assert main(["-q", "evaluate", "--llm", f"openai:fake-model@{server.base_url}", "--data", str(labelled),
                     "--out-dir", "lev"]) == 2
    captured = capsys.readouterr()
    assert "accuracy" not in captured.out and "ECE" not in captured.out
    assert "nothing was scored" in captured.err and "all 3 item(s) failed" in captured.err
    assert "first error:" in captured.err and "no answer key" in captured.err
    report = json.loads((home / "lev" / "metrics.json").read_text())
    assert report["n_scored"] == 0 and report["n_failed"] == 3 and "no answer key" in report["first_error"]
    assert "accuracy" not in report and "ece" not in report
    assert "Nothing was scored" in (home / "lev" / "report.md").read_text()


def test_llm_alone_evaluation_with_some_failures_scores_the_rest_and_counts_them(home, capsys):
    from tests.support.fake_openai import FakeOpenAIServer

    labelled = write_csv(home / "l.csv", ["text", "label"],
                         [["sports final", "sports"], ["science news", "science"], ["business deal", "business"]])
    with FakeOpenAIServer() as server:
        server.set_script(["bad_key"])  # the first request only
        assert main(["-q", "evaluate", "--llm", f"openai:fake-model@{server.base_url}", "--data", str(labelled),
                     "--out-dir", "lev"]) == 0
    out = capsys.readouterr().out
    assert "accuracy 1.0000" in out and "scored 2 of 3 texts (1 failed; first error: " in out
    report = json.loads((home / "lev" / "metrics.json").read_text())
    assert report["n_scored"] == report["n"] == 2 and report["n_failed"] == 1 and report["accuracy"] == 1.0
    assert "no answer key" in report["first_error"]
    assert "Metrics cover the 2 scored items only" in (home / "lev" / "report.md").read_text()


def test_multi_label_evaluate_prints_macro_and_micro_f1_by_name(home, tiny_bert_path, capsys):
    from tests.conftest import make_topic_texts

    texts, labels = make_topic_texts(30, seed=4)
    rows = [[t, f"{label}|news" if i % 2 else label] for i, (t, label) in enumerate(zip(texts, labels))]
    data = write_csv(home / "multi.csv", ["text", "labels"], rows)
    assert main(["-q", "train", "--data", str(data), "--name", "multi", "--encoder", tiny_bert_path]) == 0
    capsys.readouterr()
    assert main(["-q", "evaluate", "--classifier", "multi", "--data", str(data), "--out-dir", "mev"]) == 0
    out = capsys.readouterr().out
    fast = json.loads((home / "mev" / "comparison.json").read_text())["modes"]["fast"]
    assert f"macro-F1 {fast['macro_f1']:.4f}" in out and f"micro-F1 {fast['micro_f1']:.4f}" in out
    assert f"ECE per label {fast['ece']:.4f}" in out and f"ECE exact match {fast['ece_exact_match']:.4f}" in out
    md = (home / "mev" / "comparison.md").read_text()
    assert "| mode | accuracy (exact match) | macro-F1 | micro-F1 | ECE per label | ECE exact match |" in md
    assert f"| fast | {fast['accuracy']:.4f} | {fast['macro_f1']:.4f} | {fast['micro_f1']:.4f} |" in md

    assert main(["-q", "evaluate", "--classifier", "multi", "--data", str(data), "--out-dir", "sev",
                 "--through-service"]) == 0
    out = capsys.readouterr().out
    report = json.loads((home / "sev" / "metrics.json").read_text())
    assert f"macro-F1 {report['macro_f1']:.4f}" in out and f"micro-F1 {report['micro_f1']:.4f}" in out
    assert report["ece"] is not None and 0 <= report["ece"] <= 1 and 0 <= report["ece_exact_match"] <= 1
    md = (home / "sev" / "report.md").read_text()
    assert f"| macro-F1 | {report['macro_f1']:.4f} |" in md and f"| micro-F1 | {report['micro_f1']:.4f} |" in md


def test_train_with_unlabeled_texts_self_trains_and_refuses_a_bad_file(home, topic_csvs, tiny_bert_path, capsys):
    train_csv, test_csv = topic_csvs
    # the test texts with their labels dropped (the label column is ignored)
    assert main(["-q", "train", "--json", "--data", str(train_csv), "--name", "st", "--encoder", tiny_bert_path,
                 "--unlabeled", str(test_csv)]) == 0
    report = json.loads(capsys.readouterr().out)["self_training"]
    assert report["offered"] == 30 and 0 <= report["pseudo_labelled"] <= 30
    assert report["kept"] == (report["selection_score_after"] >= report["selection_score_before"])
    # with fine-tuning the backbone is tuned again on the pseudo-labels, and the summary says so
    assert main(["train", "--data", str(train_csv), "--name", "stft", "--encoder", tiny_bert_path, "--layers", "-1",
                 "--finetune", "full", "--epochs", "1", "--unlabeled", str(test_csv)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "self-training:" in x)
    assert "unlabelled texts pseudo-labelled" in line and "backbone fine-tuned again on them" in line
    assert "selection score" in line
    empty = write_csv(home / "unl.csv", ["text"], [["the striker scored"], ["   "]])
    assert main(["-q", "train", "--data", str(train_csv), "--name", "st", "--encoder", tiny_bert_path,
                 "--unlabeled", str(empty)]) == 2
    assert "unlabeled text(s) cannot be used (data row 2: empty" in capsys.readouterr().err
    no_text = write_csv(home / "nt.csv", ["body"], [["x"]])
    assert main(["-q", "train", "--data", str(train_csv), "--name", "st", "--encoder", tiny_bert_path,
                 "--unlabeled", str(no_text)]) == 2
    assert "text" in capsys.readouterr().err


def test_train_with_an_ensemble_averages_that_many_networks_and_refuses_none(home, topic_csvs, tiny_bert_path, capsys):
    train_csv, _ = topic_csvs
    assert main(["-q", "train", "--json", "--data", str(train_csv), "--name", "ens", "--encoder", tiny_bert_path,
                 "--ensemble", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["chosen"]["candidate"].endswith("3 seeds averaged")
    from shared.fusion.artifact import load_artifact

    assert load_artifact(Path(result["artifact"])).model.config.members == 3
    assert result["escalation"]["validation_kept_n"] > 0 and result["escalation"]["target"] == {
        "share": 0.2, "kept_accuracy": None}
    # the human summary states the escalation promise with its standard error
    assert main(["-q", "train", "--data", str(train_csv), "--name", "ens", "--encoder", tiny_bert_path,
                 "--ensemble", "1"]) == 0
    summary = capsys.readouterr().out
    assert "escalation: confidence under" in summary and "(target share 0.2)" in summary
    assert "one standard error)" in summary.split("escalation:")[1]
    # too few validation rows to split: the promise is on all of them, and the summary says so
    assert "on the validation rows" in summary and "unseen by the search" not in summary
    assert main(["-q", "train", "--data", str(train_csv), "--name", "ens", "--encoder", tiny_bert_path,
                 "--ensemble", "0"]) == 2
    assert "--ensemble 0: give at least 1 network" in capsys.readouterr().err
