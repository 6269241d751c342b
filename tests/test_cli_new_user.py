"""What a new user hit (issue 9), each as they met it: a message naming what is wrong, exit 2, nothing left behind."""

import csv
import json

import pytest
import sqlalchemy as sa

from shared.cli import main
from shared.settings import get_settings
from tests.conftest import train_topics, write_csv


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("FUSIONQ_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    return tmp_path


def _error(capsys) -> str:
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return captured.err


@pytest.mark.parametrize("header", [["text", "text", "label"], ["text", "label", "label"]])
def test_a_duplicated_csv_column_is_refused_with_the_file_and_the_column(home, header, capsys):
    data = write_csv(home / "dup.csv", header, [["a", "b", "c"], ["d", "e", "f"]])
    assert main(["-q", "train", "--data", str(data), "--name", "x"]) == 2
    repeated = "text" if header.count("text") > 1 else "label"
    assert f"{data}: column(s) '{repeated}' appear more than once" in _error(capsys)


def test_label_and_labels_together_are_refused(home, capsys):
    data = write_csv(home / "both.csv", ["text", "label", "labels"], [["a", "x", "x|y"], ["b", "y", "y"]])
    assert main(["-q", "train", "--data", str(data), "--name", "x"]) == 2
    assert "both a 'label' and a 'labels' column" in _error(capsys)


def test_a_directory_as_input_is_called_a_directory(home, capsys):
    (home / "folder").mkdir()
    assert main(["-q", "classify", "--classifier", "x", "--in", "folder", "--out", "p.csv"]) == 2
    assert "folder: is a directory; give the CSV file inside it" in _error(capsys)


def test_outputs_are_checked_before_any_work(home, capsys):
    (home / "out").mkdir()
    texts = write_csv(home / "texts.csv", ["text"], [["a"]])
    # the classifier does not exist either: the --out error must come first, before anything runs
    assert main(["-q", "classify", "--classifier", "ghost", "--in", str(texts), "--out", "out"]) == 2
    assert "--out out: is a directory; give a file name, e.g. out/predictions.csv" in _error(capsys)
    (home / "afile").write_text("x")
    assert main(["-q", "classify", "--classifier", "ghost", "--in", str(texts), "--out", "afile/p.csv"]) == 2
    assert "afile is a file, so no folder can be made there" in _error(capsys)
    assert main(["-q", "demo", "--out-dir", "afile"]) == 2
    assert "--out-dir afile: is a file, not a folder" in _error(capsys)
    assert not (home / "home" / "artifacts").exists()  # the demo trained nothing


@pytest.mark.parametrize("path", ["/nonexistent/encoder", "./models/mini", "a/b/c"])
def test_a_missing_local_encoder_says_no_such_directory(home, topic_csvs, path, capsys):
    train_csv, _ = topic_csvs
    assert main(["-q", "train", "--data", str(train_csv), "--name", "x", "--encoder", path]) == 2
    err = _error(capsys)
    assert f"model {path!r}: no such directory" in err and "Repo id" not in err


@pytest.mark.parametrize("env, expected", [
    ({"FUSIONQ_DATABASE_URL": "garbage"}, "FUSIONQ_DATABASE_URL=garbage: is not a database URL"),
    ({"FUSIONQ_DATABASE_URL": "postgresql://u:secret@h:port/db"}, "FUSIONQ_DATABASE_URL=postgresql://u:***@h:port/db"),
    ({"FUSIONQ_BROKER_URL": "redis://127.0.0.1:6379/0", "FUSIONQ_TASK_TIME_LIMIT": "2000"},
     "FUSIONQ_TASK_TIME_LIMIT=2000s must be at most half of FUSIONQ_VISIBILITY_TIMEOUT=3600s"),
    ({"FUSIONQ_EMBED_MAX_BATCH": "0"}, "FUSIONQ_EMBED_MAX_BATCH=0: Input should be greater than or equal to 1"),
    ({"FUSIONQ_BROKER_URL": "localhost:6379"}, "FUSIONQ_BROKER_URL=localhost:6379: is not a broker URL"),
])
def test_bad_settings_name_the_variable(home, monkeypatch, env, expected, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["classifiers"]) == 2
    err = _error(capsys)
    assert expected in err and "secret" not in err


def test_the_visibility_rule_only_binds_a_redis_broker(home, monkeypatch, capsys):
    monkeypatch.setenv("FUSIONQ_TASK_TIME_LIMIT", "2000")  # embedded broker: no visibility timeout to outlive
    assert main(["classifiers"]) == 0
    assert "no classifiers yet" in capsys.readouterr().out


def test_a_database_that_does_not_exist_or_does_not_answer(home, monkeypatch, postgres_url, capsys):
    missing = postgres_url.rsplit("/", 1)[0] + "/fusionq_no_such_db"
    monkeypatch.setenv("FUSIONQ_DATABASE_URL", missing)
    assert main(["classifiers"]) == 2
    assert 'database "fusionq_no_such_db" does not exist; create it (createdb -h 127.0.0.1 fusionq_no_such_db)' \
        in _error(capsys)
    get_settings.cache_clear()
    monkeypatch.setenv("FUSIONQ_DATABASE_URL", "postgresql://postgres@127.0.0.1:1/x")
    for command in (["classifiers"], ["db", "upgrade"], ["llm", "stats"]):
        assert main(command) == 2
        assert "cannot connect to the database postgresql+psycopg://postgres@127.0.0.1:1/x" in _error(capsys)


def _job_rows(url: str) -> tuple[int, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return (conn.execute(sa.text("select count(*) from jobs")).scalar_one(),
                    conn.execute(sa.text("select count(*) from items")).scalar_one())
    finally:
        engine.dispose()


def test_a_dead_broker_stores_nothing(home, monkeypatch, postgres_url, tiny_bert_path, capsys):
    from shared.settings import Settings

    settings = Settings(home=home / "home", database_url=postgres_url)
    from shared.db.engine import upgrade

    upgrade(settings.effective_database_url)
    train_topics(settings, tiny_bert_path)
    monkeypatch.setenv("FUSIONQ_DATABASE_URL", postgres_url)
    monkeypatch.setenv("FUSIONQ_BROKER_URL", "redis://127.0.0.1:1/0")  # nobody listens on port 1
    texts = write_csv(home / "texts.csv", ["text"], [["profit and revenue"]])
    assert main(["-q", "classify", "--classifier", "topics", "--in", str(texts), "--out", "p.csv"]) == 2
    assert "cannot reach the broker redis://127.0.0.1:1/0" in _error(capsys)
    assert _job_rows(postgres_url) == (0, 0)
    assert not (home / "p.csv").exists()


def test_a_broker_lost_after_the_job_is_stored_is_recoverable_and_says_so(postgres_url, tmp_path, tiny_bert_path):
    """The broker answers the connection check, then goes away: the job is stored and the sweeper re-sends it."""
    import datetime as dt

    from celery import Celery

    from shared.client import FusionqClient
    from shared.db.engine import session_for, upgrade
    from shared.errors import BrokerUnavailable
    from shared.service.sweeper import sweep
    from shared.settings import Settings
    from workers.dispatch import CeleryDispatcher

    settings = Settings(home=tmp_path / "home", database_url=postgres_url)
    upgrade(settings.effective_database_url)
    train_topics(settings, tiny_bert_path)
    dead = Celery(broker="redis://127.0.0.1:1/0", set_as_current=False)
    dead.conf.broker_connection_retry = False
    dead.conf.broker_transport_options = {"max_retries": 0}
    client = FusionqClient(settings, dispatcher_factory=lambda _s: CeleryDispatcher(dead, check=False))
    with pytest.raises(BrokerUnavailable, match=r"job \S+ is stored, but 1 of its 1 messages were not enqueued") as err:
        client.submit(["profit and revenue", "the striker"], classifier="topics")
    assert "the sweeper finds them missing there and re-sends them within ~25s" in str(err.value)
    assert _job_rows(postgres_url) == (1, 2)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=settings.item_lease_seconds + 1)
    with session_for(settings.effective_database_url) as session, session.begin():
        resent = sweep(session, settings, now=later, in_flight=lambda: {})  # the broker is back, empty
    assert [len(ids) for _, ids in resent.embed] == [2]


def test_classify_output_has_ids_texts_and_the_classifiers_classes_even_when_all_failed(home, tiny_bert_path,
                                                                                      capsys):
    train_topics(get_settings(), tiny_bert_path)
    texts = write_csv(home / "texts.csv", ["id", "text"], [["a-1", "profit and revenue"], ["b-2", "the striker"]])
    assert main(["-q", "classify", "--classifier", "topics", "--in", str(texts), "--out", "p.csv"]) == 0
    rows = list(csv.DictReader((home / "p.csv").open()))
    assert [(r["position"], r["id"], r["text"]) for r in rows] == [("0", "a-1", "profit and revenue"),
                                                                   ("1", "b-2", "the striker")]
    capsys.readouterr()

    empty = write_csv(home / "empty.csv", ["ref", "text"], [["r1", ""], ["r2", "   "]])
    assert main(["-q", "classify", "--classifier", "topics", "--in", str(empty), "--out", "e.csv",
                 "--id-column", "ref", "--no-text"]) == 3
    assert "every item failed (first error: empty or whitespace-only text)" in capsys.readouterr().err
    with (home / "e.csv").open() as handle:
        header = next(csv.reader(handle))
    assert header == ["position", "ref", "status", "labels", "confidence", "p_business", "p_science", "p_sports",
                      "signals", "flags", "error"]
    stats = json.loads((home / "e.stats.json").read_text())
    assert stats["labels"] == ["business", "science", "sports"] and stats["n_failed"] == 2
    assert not list(home.glob("*.partial"))
