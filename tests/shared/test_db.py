import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from shared.db import engine as db
from shared.db.common import insert_ignoring_conflicts
from shared.db.items import store_predictions
from shared.db.jobs import create_job, refresh_job
from shared.service.submit import REFUSED_TEXT_PREFIX_CHARS, new_items
from shared.db.models import Base, Classifier, Item, ItemFeatures, Job, LlmRequest, Prediction, utcnow
from shared.dispatch import TaskName
from shared.db.registry import find_classifier, parse_classifier_ref
from shared.errors import ClassifierNotFound, IdempotencyConflict, SchemaError
from shared.textio import text_hash


def _classifier(session, name="c", version=1) -> Classifier:
    row = Classifier(name=name, version=version, labels=["a", "b"], multi_label=False, encoder_spec={"model": "m"},
                     artifact_uri="/nowhere", artifact_sha256="0" * 64, metrics={})
    session.add(row)
    session.flush()
    return row


def test_migrations_upgrade_and_downgrade_cleanly_on_postgres(postgres_url):
    db.upgrade(postgres_url)
    engine = db.get_engine(postgres_url)
    assert db.current_revision(engine) == db.head_revision(postgres_url)
    assert {"classifiers", "jobs", "items", "item_features", "predictions", "llm_scores"} <= set(sa.inspect(engine).get_table_names())
    db.downgrade(postgres_url, "base")
    assert db.current_revision(engine) is None
    assert set(sa.inspect(engine).get_table_names()) == {"alembic_version"}
    db.upgrade(postgres_url)  # and back up again
    assert db.current_revision(engine) == db.head_revision(postgres_url)


def test_downgrade_past_0008_brings_back_the_text_hashes(postgres_url):
    """Items no longer store their text's hash (nothing read it); going back below 0008 refills
    the column with the digest the earlier code computed in Python."""
    db.upgrade(postgres_url)
    texts = ["plain", "Zoë's café — 東京", "tab\tand\nnewline"]
    with db.session_for(postgres_url) as session, session.begin():
        create_job(session=session, classifier=_classifier(session), mode="fast", idempotency_key=None,
                   items=new_items(texts, max_chars=100))
    db.downgrade(postgres_url, "0007")
    with db.get_engine(postgres_url).connect() as conn:
        stored = conn.execute(sa.text("SELECT text, text_hash FROM items ORDER BY position")).all()
    assert stored == [(t, text_hash(t)) for t in texts]
    db.upgrade(postgres_url)
    assert "text_hash" not in {c["name"] for c in sa.inspect(db.get_engine(postgres_url)).get_columns("items")}


def test_migration_matches_the_models(db_settings):
    """Autogenerate finds nothing to do: the hand-written migration and the ORM tables agree."""
    with db.get_engine(db_settings.effective_database_url).connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_postgres_statements_are_planned_with_their_values(postgres_url):
    """No statement is prepared server-side (psycopg would from its fifth use), so Postgres never
    switches one to a generic plan, where ``id = ANY($1)`` is searched linearly row by row
    (shared/db/engine.py; docs/BENCHMARKS.md has the timings)."""
    db.upgrade(postgres_url)
    with db.session_for(postgres_url) as session:
        for _ in range(12):
            session.execute(sa.select(Item.id).where(Item.id == sa.any_(sa.literal([1, 2, 3], sa.ARRAY(sa.BigInteger)))))
            session.execute(sa.select(Item.id).where(Item.status == sa.bindparam("s")), {"s": "pending"})
        assert session.scalar(sa.text("SELECT count(*) FROM pg_prepared_statements")) == 0


def test_analyze_keeps_statistics_only_for_columns_queries_use(postgres_url):
    """``ANALYZE items`` (after large jobs, and autovacuum's) skips the texts and other read-only
    columns (migration 0007) and still gives the planner the status, job and leases it plans claims with."""
    db.upgrade(postgres_url)
    with db.session_for(postgres_url) as session, session.begin():
        job, _, _ = create_job(session=session, classifier=_classifier(session), mode="fast", idempotency_key=None,
                               items=new_items([f"text number {n}" for n in range(50)], max_chars=100))
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id)).all()
        store_predictions(session=session, from_statuses=("pending",), item_ids=ids, make_rows=lambda: [
            {"item_id": item_id, "labels": ["a"], "probabilities": [0.9, 0.1], "confidence": 0.9, "signals": ["encoder"],
             "flags": [], "latency_ms": 1.0} for item_id in ids])
    with db.get_engine(postgres_url).connect() as conn:
        conn.execute(sa.text("ANALYZE items, predictions"))
        analysed = {(table, column) for table, column in conn.execute(sa.text(
            "SELECT tablename, attname FROM pg_stats WHERE tablename IN ('items', 'predictions')"))}
    assert {("items", c) for c in ("id", "job_id", "position", "status", "updated_at")} <= analysed
    assert ("predictions", "item_id") in analysed
    assert not {("items", c) for c in ("text", "error")} & analysed
    assert not {("predictions", c) for c in ("labels", "probabilities", "confidence")} & analysed


def test_unmigrated_postgres_is_refused_with_the_command_to_run(postgres_url):
    with pytest.raises(SchemaError, match="fusionq db upgrade"):
        db.ensure_schema(postgres_url, auto_upgrade=False)


def test_idempotency_key_returns_the_same_job_and_refuses_other_requests(db_settings):
    url = db_settings.effective_database_url
    with db.session_for(url) as session, session.begin():
        clf = _classifier(session)
        first, created, _ = create_job(session=session, classifier=clf, items=new_items(["x", "y"], max_chars=100),
                                       mode="fast", idempotency_key="k1")
        assert created
    with db.session_for(url) as session, session.begin():
        again, created, _ = create_job(session=session, classifier=clf, items=new_items(["x", "y"], max_chars=100),
                                       mode="fast", idempotency_key="k1")
        assert (again.id, created) == (first.id, False)
        with pytest.raises(IdempotencyConflict, match="already names job"):
            create_job(session=session, classifier=clf, items=new_items(["x"], max_chars=100),
                            mode="fast", idempotency_key="k1")
    with db.session_for(url) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(Job)) == 1
        assert session.scalar(sa.select(sa.func.count()).select_from(Item)) == 2


def test_bad_texts_become_failed_items_and_the_rest_stay_pending(db_settings):
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        clf = _classifier(session)
        huge = "z" * (REFUSED_TEXT_PREFIX_CHARS + 5000)
        job, _, _ = create_job(session=session, classifier=clf, items=new_items(["ok", "", "  ", huge], max_chars=100),
                               mode="fast",
                               idempotency_key=None)
        items = session.scalars(sa.select(Item).where(Item.job_id == job.id).order_by(Item.position)).all()
        assert [i.status for i in items] == ["pending", "failed", "failed", "failed"]
        assert items[3].error.startswith(f"text has {len(huge):,} characters, above the limit of 100")
        assert items[3].text == huge[:REFUSED_TEXT_PREFIX_CHARS]  # a bounded prefix is stored, not the megabytes
        assert job.n_failed == 3 and job.status == "queued"


# texts that a bulk write must carry verbatim: quotes and backslashes (JSON and SQL escapes),
# newlines and tabs, non-ASCII and astral characters, JSON-looking and SQL-looking text
AWKWARD_TEXTS = ['say "hi" \\ and \\n not a newline', "line one\nline two\tand a tab\r\n", "naïve café, 東京, 🤖 ok",
                 '{"not": "json"}', "'); DROP TABLE items; --", "null", "   padded   "]


def test_a_jobs_texts_are_stored_verbatim(db_settings):
    """The bulk insert (one JSON document on Postgres, rows on SQLite) loses and changes nothing."""
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        job, _, _ = create_job(session=session, classifier=_classifier(session), mode="fast", idempotency_key=None,
                               items=new_items(AWKWARD_TEXTS, max_chars=100), )
        stored = session.execute(sa.select(Item.position, Item.text, Item.mode, Item.status, Item.error)
                                 .where(Item.job_id == job.id).order_by(Item.position)).all()
    assert [row.text for row in stored] == AWKWARD_TEXTS
    assert {(row.mode, row.status, row.error) for row in stored} == {(None, "pending", None)}
    assert [row.position for row in stored] == list(range(len(AWKWARD_TEXTS)))


def test_texts_postgres_or_json_cannot_carry_are_refused_and_stored_cleaned(db_settings):
    """A NUL or a lone surrogate fails its item at submit; the stored prefix is cleaned so that the
    bulk insert (one JSON document on Postgres) carries it, and the other items go in as usual."""
    texts = ["fine", "a\x00b", "bad \ud800 half"]
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        job, _, _ = create_job(session=session, classifier=_classifier(session), mode="fast", idempotency_key=None,
                               items=new_items(texts, max_chars=100))
        stored = session.execute(sa.select(Item.text, Item.status, Item.error).where(Item.job_id == job.id)
                                 .order_by(Item.position)).all()
    assert [(row.text, row.status) for row in stored] == [("fine", "pending"), ("a\ufffdb", "failed"),
                                                          ("bad ? half", "failed")]
    assert "NUL character at position 1" in stored[1].error and "lone surrogate" in stored[2].error


def test_predictions_are_stored_as_given_once(db_settings):
    """store_predictions writes each row's values unchanged (one JSON document on Postgres, rows
    on SQLite), only for items that move now: a second call, or one from the wrong status, adds
    nothing. Each prediction is stamped with the time it was stored."""
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        job, _, _ = create_job(session=session, classifier=_classifier(session), mode="fast", idempotency_key=None,
                               items=new_items(["a", "b", "c"], max_chars=100))
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id).order_by(Item.position)).all()
        session.execute(sa.update(Item).where(Item.id.in_(ids[:2])).values(status="embedded"))
        rows = [{"item_id": item_id, "labels": labels, "probabilities": [0.123457, 0.876543], "confidence": 0.876543,
                 "signals": ["encoder", "llm:local:logprobs"], "flags": flags, "latency_ms": 12.5}
                for item_id, labels, flags in zip(ids, (["b"], [], ["a", "b"]), ([], ["missing:llm:api"], []))]
        before = utcnow()
        assert store_predictions(session=session, item_ids=ids, make_rows=lambda: rows) == 2  # the third is pending
        after = utcnow()
        assert store_predictions(session=session, item_ids=ids, make_rows=lambda: rows) == 0
        stored = session.scalars(sa.select(Prediction).order_by(Prediction.item_id)).all()
        got = [{column: getattr(p, column) for column in rows[0]} for p in stored]
        stamped = [p.created_at.replace(tzinfo=before.tzinfo) for p in stored]  # SQLite hands them back without zone
        statuses = session.scalars(sa.select(Item.status).order_by(Item.position)).all()
    assert got == rows[:2]
    assert all(before <= t <= after for t in stamped)
    assert statuses == ["done", "done", "pending"]


def test_upserts_are_idempotent_and_refresh_completes_the_job(db_settings):
    url = db_settings.effective_database_url
    with db.session_for(url) as session, session.begin():
        clf = _classifier(session)
        job, _, _ = create_job(session=session, classifier=clf, items=new_items(["a", "b"], max_chars=100),
                               mode="fast", idempotency_key=None)
    with db.session_for(url) as session, session.begin():
        ids = session.scalars(sa.select(Item.id).where(Item.job_id == job.id)).all()
        rows = [{"item_id": i, "encoder_key": "k", "dim": 1, "vector": b"\0\0\0\0"} for i in ids]
        insert_ignoring_conflicts(session, ItemFeatures, rows, keys=("item_id", "encoder_key"))
        insert_ignoring_conflicts(session, ItemFeatures, rows, keys=("item_id", "encoder_key"))
        assert session.scalar(sa.select(sa.func.count()).select_from(ItemFeatures)) == 2
        assert refresh_job(session=session, job_id=job.id).status == "running"
        session.execute(sa.update(Item).values(status="done"))
        done = refresh_job(session=session, job_id=job.id)
        assert (done.status, done.n_done, done.finished_at is not None) == ("completed", 2, True)


def test_registry_lookup_by_name_and_version(db_settings):
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        _classifier(session, "news", 1)
        _classifier(session, "news", 2)
        assert find_classifier(session=session, ref="news").version == 2
        assert find_classifier(session=session, ref="news@1").version == 1
        with pytest.raises(ClassifierNotFound, match=r"no classifier 'sport' in the registry \(known: news\)"):
            find_classifier(session=session, ref="sport")
        with pytest.raises(ClassifierNotFound, match="must be a number"):
            parse_classifier_ref("news@latest")


def test_a_new_job_names_what_each_stage_must_be_sent_as_stored(db_settings):
    """create_job's waiting ids, taken from what it wrote, are the stored queue: pending items (shortest
    text first) for the encoder, each source's queued requests for its LLM task; failed items nowhere."""
    texts = ["a longer text here", "tiny", "", "mid text", "the llm one", "full text"]
    modes = [None, None, None, None, "llm", "full"]
    tiers = [{"source": "local", "threshold": 0.5}, {"source": "api", "threshold": 0.5}]
    with db.session_for(db_settings.effective_database_url) as session, session.begin():
        job, _, waiting = create_job(session=session, classifier=_classifier(session), mode="fast",
                                     idempotency_key=None, tiers=tiers, llm_source="local",
                                     items=new_items(texts, max_chars=100, item_modes=modes))
        pending = session.scalars(sa.select(Item.id).where(Item.job_id == job.id, Item.status == "pending")
                                  .order_by(sa.func.length(Item.text), Item.id)).all()
        queued = session.execute(sa.select(LlmRequest.source, LlmRequest.item_id)
                                 .where(LlmRequest.job_id == job.id).order_by(LlmRequest.item_id)).all()
    assert waiting == {
        TaskName.EMBED: list(pending),
        TaskName.LLM_LOCAL: [item_id for source, item_id in queued if source == "local"],
        TaskName.LLM_API: [item_id for source, item_id in queued if source == "api"],
    }
    assert len(waiting[TaskName.LLM_LOCAL]) == 2 and len(waiting[TaskName.LLM_API]) == 1
