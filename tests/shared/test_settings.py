"""shared.settings: every validator accepts good values and refuses bad ones with a message that
names the FUSIONQ_ variable to change, whether the settings come from keywords or the environment.

Refusals are matched as ``(ConfigError, ValidationError)``: the settings raise ConfigError, and a
pydantic ValidationError is accepted too so these tests do not depend on how it surfaces.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from shared.errors import ConfigError
from shared.settings import Settings, get_settings, hide_password
from shared.vocab import Precision

REFUSED = (ConfigError, ValidationError)
REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture(autouse=True)
def no_dotenv(tmp_path, monkeypatch):
    """Settings read ``.env`` from the working directory: run where there is none."""
    monkeypatch.chdir(tmp_path)


# ---- the defaults ----------------------------------------------------------------------------------

def test_defaults_are_the_embedded_setup_under_the_home_folder(tmp_path):
    s = Settings(home=tmp_path / "h")
    assert s.embedded and s.effective_broker_url == "memory://"
    assert s.effective_database_url == f"sqlite:///{tmp_path / 'h' / 'fusionq.db'}"
    assert s.effective_artifact_dir == tmp_path / "h" / "artifacts"
    assert (s.task_time_limit, s.visibility_timeout, s.item_lease_seconds, s.max_attempts) == (600, 3600, 15, 5)
    assert (s.sweep_interval, s.worker_max_memory_mb) == (10.0, 4096)
    assert s.encoder_precision == Precision.AUTO


def test_home_and_artifact_dir_expand_the_user_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    s = Settings(home="~/fq", artifact_dir="~/art")
    assert s.home == tmp_path / "fq" and s.artifact_dir == tmp_path / "art"
    assert s.effective_artifact_dir == tmp_path / "art"
    assert Settings().home == tmp_path / ".fusionq"


# ---- FUSIONQ_TASK_TIME_LIMIT against FUSIONQ_VISIBILITY_TIMEOUT --------------------------------------

@pytest.mark.parametrize(("limit", "timeout"), [(600, 3600), (1800, 3600), (30, 60)])
def test_a_time_limit_up_to_half_the_visibility_timeout_is_accepted_with_redis(limit, timeout):
    s = Settings(broker_url=REDIS, task_time_limit=limit, visibility_timeout=timeout)
    assert (s.task_time_limit, s.visibility_timeout) == (limit, timeout) and not s.embedded


@pytest.mark.parametrize("broker", [REDIS, "rediss://cache.example:6380/1", "sentinel://s1:26379"])
def test_a_time_limit_above_half_the_visibility_timeout_is_refused_with_a_redis_broker(broker):
    with pytest.raises(REFUSED, match="FUSIONQ_TASK_TIME_LIMIT") as refused:
        Settings(broker_url=broker, task_time_limit=1801, visibility_timeout=3600)
    message = str(refused.value)
    assert "FUSIONQ_TASK_TIME_LIMIT=1801s must be at most half of FUSIONQ_VISIBILITY_TIMEOUT=3600s" in message
    assert "Redis redelivers tasks that are still running" in message


def test_the_time_limit_rule_reads_the_environment(monkeypatch):
    monkeypatch.setenv("FUSIONQ_BROKER_URL", REDIS)
    monkeypatch.setenv("FUSIONQ_TASK_TIME_LIMIT", "700")
    monkeypatch.setenv("FUSIONQ_VISIBILITY_TIMEOUT", "1200")
    with pytest.raises(REFUSED, match="FUSIONQ_TASK_TIME_LIMIT=700s .* FUSIONQ_VISIBILITY_TIMEOUT=1200s"):
        get_settings()
    monkeypatch.setenv("FUSIONQ_VISIBILITY_TIMEOUT", "1400")  # exactly twice the limit
    get_settings.cache_clear()
    s = get_settings()
    assert (s.broker_url, s.task_time_limit, s.visibility_timeout) == (REDIS, 700, 1400)
    assert get_settings() is s  # read once per process


@pytest.mark.parametrize("broker", [None, "memory://", "amqp://guest@rabbit//"])
def test_brokers_without_a_visibility_timeout_take_any_time_limit(broker):
    s = Settings(broker_url=broker, task_time_limit=3000, visibility_timeout=3600)
    assert s.task_time_limit == 3000


# ---- the OpenAI key ------------------------------------------------------------------------------

def test_the_openai_api_without_a_key_is_refused_naming_the_key_variable():
    with pytest.raises(REFUSED, match="FUSIONQ_LLM_API_KEY") as refused:
        Settings(llm_api="openai:gpt-4o-mini@https://api.openai.com/v1")
    assert "FUSIONQ_LLM_API points at api.openai.com but FUSIONQ_LLM_API_KEY is not set" in str(refused.value)


def test_the_openai_api_with_a_key_and_other_providers_without_one_are_accepted():
    s = Settings(llm_api="openai:gpt-4o-mini@https://api.openai.com/v1", llm_api_key="sk-test-123")
    assert s.llm_api_key.get_secret_value() == "sk-test-123" and "sk-test-123" not in repr(s)
    assert Settings(llm_api="openai:m@http://127.0.0.1:8000/v1").llm_api_key is None  # a local server needs none
    assert Settings(llm_api="hf:some/model").llm_api == "hf:some/model"


# ---- URLs ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "effective"), [
    ("postgresql+psycopg://user@db:5432/fusionq", "postgresql+psycopg://user@db:5432/fusionq"),
    ("postgresql://user@db/fusionq", "postgresql+psycopg://user@db/fusionq"),  # psycopg 3, not psycopg2
    ("postgres://user@db/fusionq", "postgresql+psycopg://user@db/fusionq"),
    ("sqlite:////var/lib/fusionq.db", "sqlite:////var/lib/fusionq.db"),
])
def test_database_urls_are_accepted_and_name_psycopg_3(url, effective):
    assert Settings(database_url=url).effective_database_url == effective


@pytest.mark.parametrize("url", ["garbage", "localhost:5432/fusionq", "postgresql://u@h:port/db",
                                 "Postgres SQL://u@h/db"])
def test_a_malformed_database_url_is_refused_naming_the_variable(url):
    with pytest.raises(REFUSED, match="FUSIONQ_DATABASE_URL") as refused:
        Settings(database_url=url)
    assert "is not a database URL" in str(refused.value)
    assert "postgresql+psycopg://user@host:5432/dbname" in str(refused.value)  # what a good one looks like


def test_a_refused_database_url_never_shows_its_password():
    with pytest.raises(REFUSED, match="FUSIONQ_DATABASE_URL") as refused:
        Settings(database_url="postgresql://fq:hunter2@db:port/fusionq")
    assert "hunter2" not in str(refused.value)
    assert "FUSIONQ_DATABASE_URL=postgresql://fq:***@db:port/fusionq" in str(refused.value)
    assert hide_password("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert hide_password("postgresql://user@h/db") == "postgresql://user@h/db"


def test_empty_urls_mean_unset():
    s = Settings(database_url="", broker_url="")
    assert (s.database_url, s.broker_url, s.embedded) == (None, None, True)


def test_a_broker_url_without_a_scheme_is_refused_naming_the_variable():
    with pytest.raises(REFUSED, match="FUSIONQ_BROKER_URL") as refused:
        Settings(broker_url="localhost:6379")
    assert "FUSIONQ_BROKER_URL=localhost:6379: is not a broker URL" in str(refused.value)
    assert Settings(broker_url=REDIS).effective_broker_url == REDIS


# ---- bounds of single settings, from the environment --------------------------------------------

@pytest.mark.parametrize(("variable", "bad", "good", "value"), [
    ("FUSIONQ_EMBED_ITEMS_PER_TASK", "0", "1", 1),
    ("FUSIONQ_EMBED_MAX_TOKENS", "63", "64", 64),
    ("FUSIONQ_EMBED_MAX_BATCH", "0", "1", 1),
    ("FUSIONQ_MAX_TEXT_CHARS", "0", "1", 1),
    ("FUSIONQ_TORCH_THREADS", "0", "1", 1),
    ("FUSIONQ_LLM_PRICE_IN_PER_MTOK", "-0.01", "0", 0.0),
    ("FUSIONQ_LLM_RATE_PER_SECOND", "0", "0.5", 0.5),
    ("FUSIONQ_LLM_TIMEOUT", "0", "0.1", 0.1),
    ("FUSIONQ_LLM_MAX_RETRIES", "-1", "0", 0),
    ("FUSIONQ_LLM_BREAKER_FAILURES", "0", "1", 1),
    ("FUSIONQ_LLM_BATCH_ITEMS", "0", "1", 1),
    ("FUSIONQ_TASK_TIME_LIMIT", "9", "10", 10),
    ("FUSIONQ_VISIBILITY_TIMEOUT", "59", "1200", 1200),
    ("FUSIONQ_ITEM_LEASE_SECONDS", "2", "3", 3),
    ("FUSIONQ_WORKER_MAX_MEMORY_MB", "63", "64", 64),
    ("FUSIONQ_MAX_ATTEMPTS", "0", "1", 1),
    ("FUSIONQ_SWEEP_INTERVAL", "0", "0.5", 0.5),
    ("FUSIONQ_ENCODER_PRECISION", "int4", "int8", Precision.INT8),
    ("FUSIONQ_MAX_ATTEMPTS", "five", "5", 5),
])
def test_each_bound_refuses_the_value_just_outside_naming_the_variable(monkeypatch, variable, bad, good, value):
    monkeypatch.setenv(variable, bad)
    with pytest.raises(REFUSED, match=f"{variable}={bad}: ") as refused:
        Settings()
    assert str(refused.value).count("FUSIONQ_") == 1  # one bad setting, one line
    monkeypatch.setenv(variable, good)
    assert getattr(Settings(), variable.removeprefix("FUSIONQ_").lower()) == value


def test_every_bad_setting_is_named_in_one_message(monkeypatch):
    monkeypatch.setenv("FUSIONQ_EMBED_MAX_BATCH", "0")
    monkeypatch.setenv("FUSIONQ_BROKER_URL", "nowhere")
    with pytest.raises(REFUSED) as refused:
        Settings()
    assert "FUSIONQ_EMBED_MAX_BATCH=0" in str(refused.value) and "FUSIONQ_BROKER_URL=nowhere" in str(refused.value)


def test_a_refused_key_is_never_shown():
    with pytest.raises(REFUSED, match=r"FUSIONQ_LLM_API_KEY=\*\*\*: ") as refused:
        Settings(llm_api_key=987654321)  # not a string: refused, and its value still hidden
    assert "987654321" not in str(refused.value)


# ---- where settings come from ---------------------------------------------------------------------

def test_a_dotenv_file_is_read_and_the_environment_wins(tmp_path, monkeypatch):
    Path(".env").write_text("FUSIONQ_MAX_ATTEMPTS=7\nFUSIONQ_LLM_BATCH_ITEMS=9\nUNRELATED=1\n")
    monkeypatch.setenv("FUSIONQ_LLM_BATCH_ITEMS", "3")
    s = Settings()
    assert (s.max_attempts, s.llm_batch_items) == (7, 3)
    Path(".env").write_text("FUSIONQ_MAX_ATTEMPTS=0\n")
    with pytest.raises(REFUSED, match="FUSIONQ_MAX_ATTEMPTS=0"):
        Settings()
