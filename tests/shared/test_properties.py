"""Property-based tests (hypothesis) of the inputs the service meets: submitted texts of any
Unicode and length, CSV files, and whatever an LLM answers."""

from __future__ import annotations

import csv
import math

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings, strategies as st

from shared.db.engine import session_for, upgrade
from shared.db.jobs import create_job
from shared.dispatch import TaskName, chunks
from shared.service.submit import new_items
from shared.db.models import Classifier, Item
from shared.errors import DataFileError, InputError, LLMAnswerError
from shared.llm.parse import parse_vote, probabilities_from_top_logprobs
from shared.textio import read_labelled, text_problem

FIXTURES = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
ANY_TEXT = st.text(alphabet=st.characters(codec=None), max_size=300)  # surrogates and NUL included
TEXTS = st.lists(st.one_of(ANY_TEXT, st.just(""), st.just(" \t\n"), st.text(min_size=2_000, max_size=3_000)),
                 max_size=40)
MAX_CHARS = 2_500


@pytest.fixture
def pg_session_url(postgres_url):
    upgrade(postgres_url)
    with session_for(postgres_url) as session, session.begin():
        session.add(Classifier(name="p", version=1, labels=["a", "b"], multi_label=False, encoder_spec={"encoders": []},
                               artifact_uri="/nonexistent", artifact_sha256="0" * 64, metrics={}))
    return postgres_url


@settings(max_examples=40, deadline=None, suppress_health_check=FIXTURES)
@given(texts=TEXTS, per_batch=st.integers(min_value=1, max_value=17))
def test_any_texts_are_stored_exactly_or_failed_with_a_reason_and_batched_once(pg_session_url, texts, per_batch):
    with session_for(pg_session_url) as session, session.begin():
        clf = session.scalars(sa.select(Classifier)).one()
        job, _, waiting = create_job(session=session, classifier=clf, items=new_items(texts, max_chars=MAX_CHARS),
                                     mode="fast", idempotency_key=None)
        batches = chunks(waiting.get(TaskName.EMBED, []), per_batch)
        items = session.execute(sa.select(Item.position, Item.text, Item.status, Item.error)
                                .where(Item.job_id == job.id).order_by(Item.position)).all()
        # the runs are cut from memory: the order must be the one Postgres gives the stored texts
        by_length = session.scalars(sa.select(Item.id).where(Item.job_id == job.id, Item.status == "pending")
                                    .order_by(sa.func.length(Item.text), Item.id)).all()
    assert waiting.get(TaskName.EMBED, []) == by_length
    assert [i.position for i in items] == list(range(len(texts)))  # nothing lost, nothing added
    for item, text in zip(items, texts):
        problem = text_problem(text, max_chars=MAX_CHARS)
        if problem:
            assert item.status == "failed" and item.error == problem
        else:
            assert item.status == "pending" and item.text == text  # stored byte for byte
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat)) == sum(i.status == "pending" for i in items)
    assert all(1 <= len(b) <= per_batch for b in batches)


def test_a_huge_job_is_split_into_bounded_batches(pg_session_url):
    texts = [f"text {i} " * (1 + i % 50) for i in range(20_000)]
    with session_for(pg_session_url) as session, session.begin():
        clf = session.scalars(sa.select(Classifier)).one()
        _, _, waiting = create_job(session=session, classifier=clf, items=new_items(texts, max_chars=MAX_CHARS),
                                   mode="fast", idempotency_key=None)
    batches = chunks(waiting[TaskName.EMBED], 256)
    assert len(batches) == math.ceil(20_000 / 256) and sum(len(b) for b in batches) == 20_000
    assert len({i for b in batches for i in b}) == 20_000


def test_empty_and_string_submissions_are_refused_before_anything_is_stored(sqlite_settings):
    from shared.client import FusionqClient

    with FusionqClient(sqlite_settings) as client:
        for texts, says in [([], "no texts"), ("one string", "not a single string")]:
            with pytest.raises(InputError, match=says):
                client.submit(texts, "anything")


CSV_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=200)
LABELS = st.sampled_from(["sports", "business", "Sci/Tech", "ünïcode label"])


@settings(max_examples=100, deadline=None, suppress_health_check=FIXTURES)
@given(rows=st.lists(st.tuples(CSV_TEXT, LABELS), min_size=1, max_size=30))
def test_a_csv_written_by_any_tool_reads_back_exactly(tmp_path, rows):
    path = tmp_path / "data.csv"
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    data = read_labelled(path)
    assert data.texts == [t for t, _ in rows] and data.labels == [[label] for _, label in rows]


@settings(max_examples=200, deadline=None, suppress_health_check=FIXTURES)
@given(raw=st.binary(max_size=400))
def test_any_bytes_as_a_csv_read_or_fail_with_a_data_file_error(tmp_path, raw):
    path = tmp_path / "junk.csv"
    path.write_bytes(b"text,label\n" + raw)
    try:
        data = read_labelled(path)
    except DataFileError as exc:
        assert str(path) in str(exc)  # says which file
    else:
        assert len(data.texts) == len(data.labels) and all(data.labels)


KEYS = ("A", "B", "C", "D")


@settings(max_examples=300, deadline=None)
@given(content=st.one_of(st.none(), st.text(max_size=200),
                         st.builds(lambda k, junk: f'{junk}{{"label": "{k}"}}{junk}', st.sampled_from(KEYS + ("Z",)),
                                   st.text(max_size=20))),
       multi_label=st.booleans())
def test_an_llm_vote_is_a_valid_vote_or_a_recorded_failure_never_a_default_class(content, multi_label):
    try:
        vote = parse_vote(content, KEYS, multi_label=multi_label)
    except LLMAnswerError:
        return
    assert len(vote) == len(KEYS) and set(vote) <= {0.0, 1.0}
    assert sum(vote) >= 1 and (multi_label or sum(vote) == 1)


@settings(max_examples=300, deadline=None)
@given(top=st.lists(st.tuples(st.one_of(st.sampled_from(KEYS + (" A", "a", "Z")), st.text(max_size=4)),
                              st.floats(min_value=-50, max_value=0)), min_size=1, max_size=8))
def test_logprobs_become_a_distribution_over_the_classes_or_a_failure(top):
    try:
        probs = probabilities_from_top_logprobs(top, KEYS)
    except LLMAnswerError:
        assert not any(token.strip() in KEYS for token, _ in top)  # only when no class key was seen
        return
    assert len(probs) == len(KEYS) and abs(sum(probs) - 1.0) < 1e-6 and all(0.0 <= p <= 1.0 for p in probs)
