"""Classifier artifacts on disk, verified on load.

A directory holds ``config.json`` (labels, encoders, LLM sources, temperatures per signal pattern,
label thresholds, escalation policy, metrics), ``model.safetensors`` (the fusion network) and,
when a backbone was fine-tuned, ``backbones/<i>/`` (its Hugging Face weights). One sha256 covers
every file, so a change anywhere is noticed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shared.encoders.spec import EncoderSpec, features_key
from shared.errors import ArtifactError
from shared.fusion.model import ENCODER_ONLY_PATTERN, FusionConfig, FusionModel, pattern_key
from shared.fusion.predict import Decision, decide
from shared.llm.prompts import PROMPT_VERSION

FORMAT = "fusionq-classifier/2"
WEIGHTS, CONFIG, BACKBONES = "model.safetensors", "config.json", "backbones"
# Artifacts written before the prompt version was recorded were all scored with the first prompt.
LEGACY_PROMPT_VERSION = "fq-prompt-1"
BUNDLED = "bundled"  # EncoderSpec.extra flag: the model directory is copied into the artifact


@dataclass
class ClassifierArtifact:
    """Everything needed to turn encoder features (and LLM scores) into calibrated predictions."""

    model: FusionModel
    temperatures: dict[str, float]
    labels: list[str]
    multi_label: bool
    encoders: tuple[EncoderSpec, ...]
    llm_specs: dict[str, str] = field(default_factory=dict)  # source name -> LLM spec (hf:..., openai:...)
    label_thresholds: list[float] | None = None
    escalation: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    # The prompt version the LLM scores were asked with; None for an encoder-only classifier.
    prompt_version: str | None = None

    @property
    def llm_sources(self) -> tuple[str, ...]:
        return self.model.config.llm_sources

    @property
    def features_key(self) -> str:
        return features_key(self.encoders)

    @property
    def escalation_threshold(self) -> float | None:
        return self.escalation.get("threshold")

    def check_prompt_version(self) -> None:
        """Refuse to fuse LLM scores asked with another prompt than the one the network was trained on."""
        if self.llm_sources and self.prompt_version != PROMPT_VERSION:
            raise ArtifactError(
                f"this classifier was trained on LLM answers to prompt version {self.prompt_version!r}, and this "
                f"fusionq asks prompt version {PROMPT_VERSION!r}: their scores are not comparable. Retrain it "
                "(fusionq train ... --llm ...), or use mode fast")

    def temperature_for(self, present: np.ndarray) -> float:
        return self.temperatures.get(pattern_key(present, self.llm_sources), self.temperatures[ENCODER_ONLY_PATTERN])

    def logits(self, features: np.ndarray, llm_scores: np.ndarray | None = None,
               llm_mask: np.ndarray | None = None) -> np.ndarray:
        """Calibrated logits [N, C]: each row divided by the temperature of its signal pattern."""
        if features.ndim != 2 or features.shape[1] != self.model.config.feature_dim:
            raise ArtifactError(
                f"features of shape {features.shape} do not fit this classifier, which expects "
                f"[N, {self.model.config.feature_dim}] from {self.features_key}"
            )
        with torch.no_grad():
            logits = self.model(
                torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32)),
                None if llm_scores is None else torch.from_numpy(np.ascontiguousarray(llm_scores, dtype=np.float32)),
                None if llm_mask is None else torch.from_numpy(np.ascontiguousarray(llm_mask, dtype=np.float32)),
            ).numpy()
        if llm_mask is None:
            return logits / self.temperatures[ENCODER_ONLY_PATTERN]
        patterns, row_pattern = np.unique(np.asarray(llm_mask) > 0.5, axis=0, return_inverse=True)
        t = np.array([self.temperature_for(p) for p in patterns], dtype=np.float64)[row_pattern.reshape(-1)]
        return logits / t[:, None]

    def decide(self, features: np.ndarray, llm_scores: np.ndarray | None = None,
               llm_mask: np.ndarray | None = None) -> Decision:
        """Calibrated decision for a batch of feature vectors [N, D] and any LLM scores [N, S, C] / mask [N, S]."""
        return decide(self.logits(features, llm_scores, llm_mask), multi_label=self.multi_label,
                      threshold=self.label_thresholds or 0.5)


def save_artifact(directory: Path, artifact: ClassifierArtifact) -> str:
    """Write the artifact into ``directory`` (created; must not hold one already); returns its sha256.

    Encoders flagged ``bundled`` (fine-tuned backbones) are copied in and referred to relatively.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if (directory / CONFIG).exists():
        raise ArtifactError(f"{directory} already holds an artifact; versions are never overwritten")
    directory.mkdir(parents=True, exist_ok=True)
    encoders = []
    for i, spec in enumerate(artifact.encoders):
        if spec.extra.get(BUNDLED):
            relative = f"{BACKBONES}/{i}"
            if Path(spec.model).resolve() != (directory / relative).resolve():
                shutil.copytree(spec.model, directory / relative)
            spec = dataclasses.replace(spec, model=relative)
        encoders.append(spec.to_dict())
    state = {k: v.detach().contiguous() for k, v in artifact.model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS), metadata={"format": FORMAT})
    config = {
        "format": FORMAT,
        "fusion": artifact.model.config.to_dict(),
        "temperatures": artifact.temperatures,
        "labels": artifact.labels,
        "multi_label": artifact.multi_label,
        "label_thresholds": artifact.label_thresholds,
        "encoders": encoders,
        "llm_specs": artifact.llm_specs,
        "escalation": artifact.escalation,
        "metrics": artifact.metrics,
        "prompt_version": artifact.prompt_version,
    }
    (directory / CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
    return artifact_sha256(directory)


def artifact_sha256(directory: Path) -> str:
    """One digest over every file of the artifact (names and contents), so a change to any is noticed."""
    directory = Path(directory)
    digest = hashlib.sha256()
    for name in (CONFIG, WEIGHTS):
        if not (directory / name).is_file():
            raise ArtifactError(f"classifier artifact {directory}: {name} is missing; retrain or restore it")
    files = [directory / CONFIG, directory / WEIGHTS]
    if (directory / BACKBONES).is_dir():
        files += sorted(p for p in (directory / BACKBONES).rglob("*") if p.is_file())
    for path in files:
        digest.update(str(path.relative_to(directory)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_artifact(directory: Path, *, expected_sha256: str | None = None) -> ClassifierArtifact:
    """Load and verify an artifact; every problem becomes an :class:`ArtifactError` naming the path."""
    from safetensors.torch import load_file

    directory = Path(directory).resolve()
    digest = artifact_sha256(directory)
    if expected_sha256 and digest != expected_sha256:
        raise ArtifactError(
            f"classifier artifact {directory} is corrupt or was replaced: sha256 {digest[:12]}... "
            f"differs from the registry's {expected_sha256[:12]}...; retrain or restore it"
        )
    try:
        config = json.loads((directory / CONFIG).read_text())
        if config.get("format") != FORMAT:
            raise ArtifactError(f"{directory / CONFIG}: format {config.get('format')!r}, expected {FORMAT!r}; "
                                "this classifier was trained by another fusionq version: retrain it")
        model = FusionModel(FusionConfig.from_dict(config["fusion"]))
        model.load_state_dict(load_file(str(directory / WEIGHTS)))
        model.eval()
        encoders = tuple(_resolve(EncoderSpec.from_dict(d), directory) for d in config["encoders"])
        return ClassifierArtifact(
            model=model, temperatures={k: float(v) for k, v in config["temperatures"].items()},
            labels=list(config["labels"]), multi_label=bool(config["multi_label"]), encoders=encoders,
            llm_specs=dict(config.get("llm_specs") or {}), label_thresholds=config.get("label_thresholds"),
            escalation=config.get("escalation") or {}, metrics=config.get("metrics", {}),
            prompt_version=config.get("prompt_version", LEGACY_PROMPT_VERSION if config.get("llm_specs") else None))
    except ArtifactError:
        raise
    except Exception as exc:  # json, safetensors and torch each raise their own types
        raise ArtifactError(f"classifier artifact {directory} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def _resolve(spec: EncoderSpec, directory: Path) -> EncoderSpec:
    """A bundled backbone's path, made absolute against the artifact's directory."""
    if spec.extra.get(BUNDLED) and not Path(spec.model).is_absolute():
        return dataclasses.replace(spec, model=str(directory / spec.model))
    return spec


_CACHE: dict[tuple[str, str], ClassifierArtifact] = {}
_CACHE_LOCK = threading.Lock()


def get_artifact(directory: str, sha256: str) -> ClassifierArtifact:
    """This process's copy of an artifact, loaded and verified once (artifacts are immutable)."""
    key = (str(directory), sha256)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = load_artifact(Path(directory), expected_sha256=sha256)
        return _CACHE[key]
