"""Classifier artifacts on disk: ``model.safetensors`` + ``config.json``, verified on load."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.encoders.spec import EncoderSpec
from shared.errors import ArtifactError
from shared.fusion.model import FusionConfig, FusionModel
from shared.fusion.predict import Decision, decide

FORMAT = "fusionq-classifier/1"
WEIGHTS, CONFIG = "model.safetensors", "config.json"


@dataclass
class ClassifierArtifact:
    """Everything needed to turn encoder features (and LLM scores) into calibrated predictions."""

    model: FusionModel
    temperature: float
    labels: list[str]
    multi_label: bool
    encoder: EncoderSpec
    metrics: dict = field(default_factory=dict)

    def decide(self, features: np.ndarray, llm_scores: np.ndarray | None = None,
               llm_mask: np.ndarray | None = None) -> Decision:
        """Calibrated decision for a batch of feature vectors [N, D]."""
        if features.ndim != 2 or features.shape[1] != self.model.config.feature_dim:
            raise ArtifactError(
                f"features of shape {features.shape} do not fit this classifier, which expects "
                f"[N, {self.model.config.feature_dim}] from encoder {self.encoder.key}"
            )
        with torch.no_grad():
            logits = self.model(
                torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                None if llm_scores is None else torch.from_numpy(llm_scores),
                None if llm_mask is None else torch.from_numpy(llm_mask),
            ).numpy()
        return decide(logits / self.temperature, multi_label=self.multi_label)


def save_artifact(directory: Path, artifact: ClassifierArtifact) -> str:
    """Write the artifact into ``directory`` (created; must not hold one already); returns its sha256."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if (directory / CONFIG).exists():
        raise ArtifactError(f"{directory} already holds an artifact; versions are never overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in artifact.model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "fusion": artifact.model.config.to_dict(),
        "temperature": artifact.temperature,
        "labels": artifact.labels,
        "multi_label": artifact.multi_label,
        "encoder": artifact.encoder.to_dict(),
        "metrics": artifact.metrics,
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return artifact_sha256(directory)


def artifact_sha256(directory: Path) -> str:
    """One digest over both files, so a change to either is noticed."""
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        path = Path(directory) / name
        if not path.is_file():
            raise ArtifactError(f"classifier artifact {directory}: {name} is missing; retrain or restore it")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_artifact(directory: Path, *, expected_sha256: str | None = None) -> ClassifierArtifact:
    """Load and verify an artifact; every problem becomes an :class:`ArtifactError` naming the path."""
    from safetensors.torch import load_file

    directory = Path(directory)
    digest = artifact_sha256(directory)
    if expected_sha256 and digest != expected_sha256:
        raise ArtifactError(
            f"classifier artifact {directory} is corrupt or was replaced: sha256 {digest[:12]}... "
            f"differs from the registry's {expected_sha256[:12]}...; retrain or restore it"
        )
    try:
        config = json.loads((directory / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise ArtifactError(f"{directory / CONFIG}: format {config.get('format')!r}, expected {FORMAT!r}")
        model = FusionModel(FusionConfig.from_dict(config["fusion"]))
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        model.eval()
        return ClassifierArtifact(model=model, temperature=float(config["temperature"]), labels=list(config["labels"]),
                                  multi_label=bool(config["multi_label"]),
                                  encoder=EncoderSpec.from_dict(config["encoder"]), metrics=config.get("metrics", {}))
    except ArtifactError:
        raise
    except Exception as exc:  # json, safetensors and torch each raise their own types
        raise ArtifactError(f"classifier artifact {directory} cannot be loaded: {type(exc).__name__}: {exc}") from exc


_CACHE: dict[tuple[str, str], ClassifierArtifact] = {}
_CACHE_LOCK = threading.Lock()


def get_artifact(directory: str, sha256: str) -> ClassifierArtifact:
    """This process's copy of an artifact, loaded and verified once (artifacts are immutable)."""
    key = (str(directory), sha256)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_artifact(Path(directory), expected_sha256=sha256)
        return _CACHE[key]
