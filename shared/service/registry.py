"""Publishing a trained classifier: artifact files under the artifact directory, then its registry row."""

from __future__ import annotations

import logging
import shutil

from shared.db.engine import ensure_schema, session_for
from shared.db.models import Classifier
from shared.db.registry import find_classifier, next_version, publish_classifier
from shared.encoders.spec import specs_to_dict
from shared.fusion.artifact import ClassifierArtifact, load_artifact, save_artifact
from shared.settings import Settings

log = logging.getLogger(__name__)


def publish_artifact(settings: Settings, name: str, artifact: ClassifierArtifact) -> Classifier:
    """Save ``artifact`` as the next version of ``name`` and register it; the registry row.

    The files are written before the row's transaction opens (no file I/O under a database lock);
    if the row cannot be written, the files are removed again, so nothing half-published stays.
    """
    url = settings.effective_database_url
    ensure_schema(url)
    with session_for(url) as session:
        version = next_version(session=session, name=name)
    directory = settings.effective_artifact_dir / name / f"v{version}"
    sha = save_artifact(directory, artifact)
    try:
        stored = load_artifact(directory, expected_sha256=sha)  # bundled backbones now live in the artifact
        with session_for(url) as session, session.begin():
            row = publish_classifier(session=session, row=Classifier(
                name=name, version=version, labels=artifact.labels, multi_label=artifact.multi_label,
                encoder_spec=specs_to_dict(stored.encoders), artifact_uri=str(directory), artifact_sha256=sha,
                metrics={**artifact.metrics, "serving": serving_info(artifact)}))
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    log.info("published classifier %s@%d (%s)", name, version, directory)
    return row


def registered_artifact(settings: Settings, ref: str) -> tuple[str, str]:
    """(artifact directory, sha256) of the registered classifier ``NAME`` or ``NAME@VERSION``."""
    url = settings.effective_database_url
    ensure_schema(url)
    with session_for(url) as session:
        row = find_classifier(session=session, ref=ref)
        return row.artifact_uri, row.artifact_sha256


def serving_info(artifact: ClassifierArtifact) -> dict:
    """What the service needs to plan a job without opening the artifact: the LLM sources the
    fusion network takes, the calibrated escalation threshold, the cost of one escalation and the
    prompt version its LLM scores were asked with."""
    escalation = artifact.escalation or {}
    return {"llm_sources": list(artifact.llm_sources), "escalation_threshold": escalation.get("threshold"),
            "llm_cost_per_text_usd": escalation.get("llm_cost_per_text_usd"),
            "prompt_version": artifact.prompt_version}
