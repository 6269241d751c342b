"""AutoFusionClassifier: labelled texts in, a calibrated, layer-aware, LLM-aware classifier out.

One call with defaults (MiniLM, automatic layer and fusion choice, no LLM):

    clf = AutoFusionClassifier().fit("train.csv")
    clf.predict(["some text"])

Every choice can be set: encoders (several, encoder-style or decoder LLMs), layers, fusion
operator, LLM sources, fine-tuning, escalation target. Every selection is made on a validation
split (the ``dev`` data, or a stratified share of the training data), never on test data.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from shared.encoders.hf import encode_features, get_encoder, resolve_model_path
from shared.encoders.spec import EncoderSpec, specs_to_dict
from shared.errors import ConfigError, InputError
from shared.fusion.artifact import ClassifierArtifact, load_artifact, save_artifact
from shared.fusion.escalation import EscalationTarget, choose_threshold, escalation_curve
from shared.fusion.layers import probe_layers, rank_layers
from shared.fusion.operators import OPERATORS
from shared.fusion.predict import Decision
from shared.fusion.training import (
    DEFAULT_CANDIDATES,
    Candidate,
    Signals,
    TrainingConfig,
    correct_rows,
    encode_targets,
    split_train_validation,
    train_fusion,
)
from shared.progress import progress_bar
from shared.serving import WORKER_SOURCES
from shared.settings import DEFAULT_ENCODER, Settings, get_settings
from shared.textio import LabelledData, check_known_labels, check_training_data, read_labelled, text_problems

log = logging.getLogger(__name__)

MODES = ("fast", "full", "auto")
DECODER_TYPES = ("llama", "qwen2", "qwen3", "mistral", "mixtral", "gemma", "gemma2", "gemma3", "phi", "phi3",
                 "falcon", "gpt2", "gpt_neox", "opt", "olmo", "granite")


@dataclass
class PredictionBatch:
    """Predictions for a list of texts in one mode, with what the LLM path cost."""

    decision: Decision
    labels: list[list[str]]
    escalated: np.ndarray  # bool [N]: the item got LLM scores
    llm_calls: int = 0  # questions actually sent to an LLM (cache hits excluded)
    llm_questions: int = 0  # questions the mode needed, cache hits included
    llm_spent_usd: float = 0.0  # what this call paid (cache hits are free)
    llm_cost_usd: float = 0.0  # what the questions cost at recorded prices, cache hits included
    llm_cost_by_source: list[float] = field(default_factory=list)
    llm_scores: np.ndarray | None = None  # [N, S, C], zeros where not asked or failed
    llm_mask: np.ndarray | None = None  # [N, S]
    seconds: dict = field(default_factory=dict)


@dataclass(frozen=True)
class LLMUsage:
    """LLM scores of N texts from S sources, and what getting them cost."""

    scores: np.ndarray  # [N, S, C]
    mask: np.ndarray  # [N, S]
    calls: int
    questions: int
    spent_usd: float
    cost_by_source: list[float]  # what the answers cost at recorded prices, cache hits included
    failed: int

    @property
    def cost_per_text(self) -> float:
        """Sum over sources of the mean cost of one answer."""
        return sum(self.cost_by_source) / max(len(self.scores), 1)


def as_labelled(data, *, source: str = "data") -> LabelledData:
    """A CSV path, a :class:`LabelledData`, or ``(texts, labels)`` with one label or a list per text."""
    if isinstance(data, LabelledData):
        return data
    if isinstance(data, (str, Path)):
        return read_labelled(data)
    try:
        texts, labels = data
    except (TypeError, ValueError):
        raise InputError(f"{source}: give a CSV path, LabelledData or (texts, labels); got {type(data).__name__}") from None
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise InputError(f"{source}: {len(texts)} texts but {len(labels)} labels")
    multi = any(isinstance(x, (list, tuple, set)) for x in labels)
    rows = [sorted(str(n) for n in x) if isinstance(x, (list, tuple, set)) else [str(x)] for x in labels]
    empty = [i + 1 for i, r in enumerate(rows) if not multi and not r[0].strip()]
    if empty:
        raise InputError(f"{source}: rows {empty[:5]} have an empty label")
    return LabelledData(texts=texts, labels=rows, multi_label=multi, source=source)


def guess_pooling(model: str) -> str:
    """``last`` (last real token) for decoder LLMs, ``mean`` for encoders."""
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(model))
    except Exception:  # noqa: BLE001 - unknown here: the encoder's own loading will report it properly
        return "mean"
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures) or config.model_type in DECODER_TYPES:
        return "last"
    return "mean"


class AutoFusionClassifier:
    """See the module docstring. Fitted state: ``artifact_`` (what is saved and served) and ``report_``."""

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        encoders: str | EncoderSpec | Sequence[str | EncoderSpec] = DEFAULT_ENCODER,
        llms: Sequence[str] = (),
        multi_label: bool | None = None,
        *,
        layers: str | int | Sequence[int] = "auto",
        pooling: str | None = None,
        max_length: int = 256,
        fusion: str = "auto",
        width: int = 256,
        finetune=None,
        escalation: EscalationTarget = EscalationTarget(),
        training: TrainingConfig = TrainingConfig(),
        settings: Settings | None = None,
        show_progress: bool = False,
    ) -> None:
        if fusion != "auto" and fusion not in OPERATORS:
            raise ConfigError(f"fusion {fusion!r} is not auto or one of {', '.join(OPERATORS)}")
        if isinstance(layers, str) and layers != "auto":
            raise ConfigError(f"layers {layers!r}: give 'auto', a layer index or a list of them")
        self.labels = list(labels) if labels else None
        self.encoders = [encoders] if isinstance(encoders, (str, EncoderSpec)) else list(encoders)
        if not self.encoders:
            raise ConfigError("give at least one encoder")
        self.llms = list(llms)
        if len(set(self.llms)) != len(self.llms):
            raise ConfigError(f"LLM sources repeat: {self.llms}")
        self.multi_label = multi_label
        self.layers = layers if isinstance(layers, str) else ((layers,) if isinstance(layers, int) else tuple(layers))
        self.pooling, self.max_length, self.fusion, self.width = pooling, max_length, fusion, width
        self.finetune = _finetune_config(finetune)
        self.escalation, self.training = escalation, training
        self.settings = settings or get_settings()
        self.show_progress = show_progress
        self.artifact_: ClassifierArtifact | None = None
        self.report_: dict = {}
        self._workdir: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ fit

    def _prepare(self, train, dev):
        """Check the data and split it: (labels, multi_label, texts, y, val_texts, y_val, report)."""
        settings = self.settings
        data = as_labelled(train, source="train")
        if self.multi_label is False and data.multi_label and any(len(r) != 1 for r in data.labels):
            raise InputError(f"{data.source}: multi_label=False but some rows have several labels")
        multi_label = data.multi_label if self.multi_label is None else self.multi_label
        check_training_data(data, max_chars=settings.max_text_chars)
        labels = self.labels or data.label_names()
        check_known_labels(data, labels)
        targets = encode_targets(data.labels, labels, multi_label=multi_label)
        if dev is not None:
            dev = as_labelled(dev, source="dev")
            check_training_data(dev, max_chars=settings.max_text_chars)
            check_known_labels(dev, labels)
            texts, y, val_texts = data.texts, targets, dev.texts
            y_val = encode_targets(dev.labels, labels, multi_label=multi_label)
            validation_source = dev.source
        else:
            train_idx, val_idx = split_train_validation(targets, val_fraction=self.training.val_fraction,
                                                        seed=self.training.seed)
            texts, val_texts = [data.texts[i] for i in train_idx], [data.texts[i] for i in val_idx]
            y, y_val = targets[train_idx], targets[val_idx]
            validation_source = f"stratified {self.training.val_fraction:.0%} of {data.source}"
        report: dict = {"n_train": len(texts), "n_validation": len(val_texts), "validation_source": validation_source,
                        "labels": labels, "multi_label": multi_label}
        return labels, multi_label, texts, y, val_texts, y_val, report

    def layer_report(self, train, dev=None) -> list[dict]:
        """Validation score of a linear probe on every hidden layer of every encoder (no classifier is fitted)."""
        labels, multi_label, texts, y, val_texts, y_val, report = self._prepare(train, dev)
        layers, self.layers = self.layers, "auto"
        try:
            specs = [self._base_spec(e) for e in self.encoders]
            features = [self._layer_features(spec, texts, val_texts) for spec in specs]
            self._block_sets(features, y, y_val, labels, multi_label, report)
        finally:
            self.layers = layers
        return report["layers"]

    def fit(self, train, dev=None) -> "AutoFusionClassifier":
        started = time.perf_counter()
        labels, multi_label, texts, y, val_texts, y_val, report = self._prepare(train, dev)

        specs = [self._base_spec(e) for e in self.encoders]
        if self.finetune is not None:
            specs, report["finetune"] = self._finetune_all(specs, texts, y, val_texts, y_val, labels, multi_label)
        timer = time.perf_counter()
        layer_features = [self._layer_features(spec, texts, val_texts) for spec in specs]
        report["seconds_encode"] = round(time.perf_counter() - timer, 2)

        timer = time.perf_counter()
        block_sets = self._block_sets(layer_features, y, y_val, labels, multi_label, report)
        trained, blocks, report["candidates"] = self._select(layer_features, block_sets, y, y_val, labels, multi_label)
        final_specs = [replace(spec, layers=tuple(l for i, l in blocks if i == k)) for k, spec in enumerate(specs)]
        train_x, block_dims = _stack(layer_features, blocks, 0)  # the winner's features, for an LLM-aware refit
        val_x, _ = _stack(layer_features, blocks, 1)
        chosen = next(c for c in report["candidates"] if c["chosen"])
        report["chosen"] = {"layers": {s.model: list(s.layers) for s in final_specs}, "candidate": chosen["name"],
                            "val_score": chosen["val_score"]}
        report["seconds_select"] = round(time.perf_counter() - timer, 2)

        sources = tuple(self.llms)
        if sources:
            usage = self._llm_usage(sources, texts + val_texts, labels, multi_label)
            n = len(texts)
            candidate = Candidate(chosen["operator"], chosen["width"], chosen["hidden"])
            val_signals = Signals(val_x, usage.scores[n:], usage.mask[n:])
            trained = train_fusion(Signals(train_x, usage.scores[:n], usage.mask[:n]), y, labels=labels,
                                   multi_label=multi_label, block_dims=block_dims, llm_sources=sources,
                                   candidates=(candidate,), config=self.training, validation=(val_signals, y_val))
            report["llm"] = {"sources": {name: self._llm_spec(name)[0].name for name in sources},
                             "calls": usage.calls, "questions": usage.questions, "failed": usage.failed,
                             "spent_usd": round(usage.spent_usd, 6), "cost_per_text_usd": usage.cost_per_text}
            log.info("fit asked the LLMs %d new questions (%d answered from the cache), spent $%.4f",
                     usage.calls, usage.questions - usage.calls, usage.spent_usd)
        else:
            usage, val_signals = None, Signals(val_x)
            report["llm"] = None
            log.info("no LLM configured: the classifier is encoder-only (fast mode)")

        self.artifact_ = ClassifierArtifact(
            model=trained.model, temperatures=trained.temperatures, labels=list(labels), multi_label=multi_label,
            encoders=tuple(final_specs), llm_specs={name: self._llm_spec(name)[0].name for name in sources},
            label_thresholds=trained.label_thresholds)
        self.artifact_.escalation = self._escalation(val_signals, y_val, usage)
        report["validation"] = trained.validation
        report["seconds"] = round(time.perf_counter() - started, 2)
        self.artifact_.metrics = {"validation": trained.validation, "fit": report}
        self.report_ = report
        return self

    def _base_spec(self, encoder: str | EncoderSpec) -> EncoderSpec:
        if isinstance(encoder, EncoderSpec):
            spec = encoder
        else:
            spec = EncoderSpec(model=encoder, pooling=self.pooling or guess_pooling(encoder),
                               max_length=self.max_length)
        return spec if self.layers == "auto" else replace(spec, layers=self.layers)

    def _finetune_all(self, specs, texts, y, val_texts, y_val, labels, multi_label):
        from shared.encoders.finetune import finetune_backbone

        if self._workdir is None:
            self._workdir = tempfile.TemporaryDirectory(prefix="fusionq-backbones-")
        tuned, rows = [], []
        for i, spec in enumerate(specs):
            steps = self.finetune.epochs * len(texts)
            with progress_bar(total=steps, desc=f"fine-tune {Path(spec.model).name}", unit="text",
                              enabled=self.show_progress) as bar:
                result = finetune_backbone(spec, texts, y, val_texts, y_val, n_classes=len(labels),
                                           multi_label=multi_label, out_dir=Path(self._workdir.name) / str(i),
                                           config=self.finetune, device=self.settings.device, on_step=bar.update)
            tuned.append(replace(result.spec, layers=spec.layers))
            rows.append({"model": spec.model, "method": self.finetune.method, "history": result.history,
                         "best_epoch": result.best_epoch, "seconds": round(result.seconds, 2)})
        return tuned, rows

    def _layer_features(self, spec: EncoderSpec, texts, val_texts) -> dict:
        """{layer: (train features, validation features)} for every layer the selection may use."""
        encoder = get_encoder(spec, device=self.settings.device)
        layers = encoder.layer_indices() if self.layers == "auto" else spec.layers
        reader = encoder.with_layers(tuple(layers))
        out = {}
        for part, part_texts in (("train", texts), ("validation", val_texts)):
            with progress_bar(total=len(part_texts), desc=f"encode {part} ({Path(spec.model).name})", unit="text",
                              enabled=self.show_progress) as bar:
                features = reader.encode(part_texts, max_tokens=self.settings.embed_max_tokens,
                                         max_batch=self.settings.embed_max_batch, on_batch=bar.update)
            for j, layer in enumerate(layers):
                out.setdefault(layer, []).append(features[:, j * encoder.hidden_size:(j + 1) * encoder.hidden_size])
        return out

    def _block_sets(self, layer_features, y, y_val, labels, multi_label, report) -> list[list[tuple[int, int]]]:
        """Candidate (encoder index, layer) block lists: the given layers, or the 1, 2 and 3 best per encoder."""
        if self.layers != "auto":
            return [[(i, l) for i, feats in enumerate(layer_features) for l in feats]]
        rankings, report["layers"] = [], []
        for i, feats in enumerate(layer_features):
            with progress_bar(total=len(feats), desc="probe layers", unit="layer", enabled=self.show_progress) as bar:
                rows = probe_layers({l: f[0] for l, f in feats.items()}, y, {l: f[1] for l, f in feats.items()},
                                    y_val, labels=labels, multi_label=multi_label, config=self.training,
                                    on_layer=bar.update)
            report["layers"].append({"encoder": self._display(i), "rows": rows})
            rankings.append(rank_layers(rows))
        sets = []
        for k in (1, 2, 3):
            blocks = [(i, layer) for i, ranking in enumerate(rankings) for layer in ranking[:k]]
            if blocks not in sets:
                sets.append(blocks)
        return sets

    def _display(self, i: int) -> str:
        spec = self.encoders[i]
        return spec.model if isinstance(spec, EncoderSpec) else spec

    def _candidates(self, n_blocks: int) -> tuple[Candidate, ...]:
        if n_blocks == 1 or self.fusion == "concat":
            return DEFAULT_CANDIDATES
        operators = OPERATORS if self.fusion == "auto" else (self.fusion,)
        projected = tuple(Candidate(op, self.width, 0) for op in operators if op != "concat")
        return (DEFAULT_CANDIDATES if "concat" in operators else ()) + projected

    def _select(self, layer_features, block_sets, y, y_val, labels, multi_label):
        """Fit every block set x candidate; keep the best on validation (ties: fewer blocks)."""
        rows, best = [], None
        total = sum(len(self._candidates(len(b))) for b in block_sets)
        with progress_bar(total=total, desc="select fusion", unit="fit", enabled=self.show_progress) as bar:
            for blocks in block_sets:
                train_x, dims = _stack(layer_features, blocks, 0)
                val_x, _ = _stack(layer_features, blocks, 1)
                candidates = self._candidates(len(blocks))
                trained = train_fusion(train_x, y, labels=labels, multi_label=multi_label, block_dims=dims,
                                       candidates=candidates, config=self.training, validation=(val_x, y_val))
                bar.update(len(candidates))
                name = "+".join(f"L{l}" if len(layer_features) == 1 else f"e{i}L{l}" for i, l in blocks)
                for row in trained.candidates:
                    rows.append({**row, "blocks": name, "n_blocks": len(blocks), "chosen": False})
                score = max(r["val_score"] for r in trained.candidates)
                if best is None or score > best[0] + 1e-9:
                    best = (score, trained, blocks, len(rows) - len(trained.candidates))
        score, trained, blocks, offset = best
        winner = max(range(offset, offset + len(trained.candidates)), key=lambda j: (rows[j]["val_score"], -rows[j]["val_loss"]))
        rows[winner]["chosen"] = True
        return trained, blocks, rows

    def _llm_spec(self, name: str):
        """(LLMSpec, worker source) of a configured LLM: local/api, or an explicit hf:/openai: spec."""
        from shared.llm.run import choose_llm
        from shared.llm.sources import parse_llm_spec

        if self.artifact_ is not None and name in self.artifact_.llm_specs:
            spec = parse_llm_spec(self.artifact_.llm_specs[name])
        else:
            spec = choose_llm(self.settings, name).spec
        return spec, (name if name in WORKER_SOURCES else None)

    def _llm_usage(self, sources: Sequence[str], texts: list[str], labels: list[str], multi_label: bool) -> LLMUsage:
        """Scores of ``texts`` from every source, through the cache (a second fit asks nothing new)."""
        from shared.llm.prompts import LabelSet
        from shared.llm.run import score_in_process

        label_set = LabelSet(tuple(labels))
        scores = np.zeros((len(texts), len(sources), len(labels)), dtype=np.float32)
        mask = np.zeros((len(texts), len(sources)), dtype=np.float32)
        calls = failed = 0
        spent, cost_by_source = 0.0, []
        for s, name in enumerate(sources):
            spec, source = self._llm_spec(name)
            answers = score_in_process(self.settings, spec, labels=label_set, multi_label=multi_label, texts=texts,
                                       show_progress=self.show_progress, desc=f"LLM {name}", source=source)
            for i, answer in enumerate(answers):
                if answer.probabilities is not None:
                    scores[i, s] = answer.probabilities
                    mask[i, s] = 1.0
            calls += sum(not a.cached for a in answers)
            failed += sum(a.method == "failed" for a in answers)
            spent += sum(a.spent_usd for a in answers)
            cost_by_source.append(float(sum(a.cost_usd for a in answers)))
        return LLMUsage(scores=scores, mask=mask, calls=calls, questions=len(texts) * len(sources), spent_usd=spent,
                        cost_by_source=cost_by_source, failed=failed)

    def _escalation(self, val: Signals, y_val: np.ndarray, usage: LLMUsage | None) -> dict:
        """Threshold meeting the target on calibrated validation predictions, and the whole trade-off curve."""
        artifact = self.artifact_
        fast = artifact.decide(val.features)
        correct_fast = correct_rows(fast.label_matrix, y_val, artifact.multi_label)
        correct_fused = None
        if val.llm_scores is not None:
            fused = artifact.decide(val.features, val.llm_scores, val.llm_mask)
            correct_fused = correct_rows(fused.label_matrix, y_val, artifact.multi_label)
        threshold = choose_threshold(self.escalation, fast.confidence, correct_fast)
        kept = fast.confidence >= threshold
        return {
            "target": self.escalation.to_dict(), "threshold": threshold,
            "validation_escalated_share": float((~kept).mean()),
            "validation_kept_accuracy": float(correct_fast[kept].mean()) if kept.any() else None,
            "llm_cost_per_text_usd": usage.cost_per_text if usage else 0.0,
            "curve": escalation_curve(fast.confidence, correct_fast, correct_fused,
                                      llm_cost_per_item=usage.cost_per_text if usage else 0.0),
        }

    # ------------------------------------------------------------------ predict

    def _fitted(self) -> ClassifierArtifact:
        if self.artifact_ is None:
            raise ConfigError("this AutoFusionClassifier is not fitted: call fit() or load()")
        return self.artifact_

    def features(self, texts: Sequence[str]) -> np.ndarray:
        """The classifier's encoder features of ``texts`` [N, D] (unusable texts raise, naming them)."""
        problems = text_problems(texts, max_chars=self.settings.max_text_chars)
        if problems:
            shown = "; ".join(f"text {i}: {p}" for i, p in problems[:5])
            raise InputError(f"{len(problems)} text(s) cannot be classified ({shown})")
        artifact = self._fitted()
        with progress_bar(total=len(texts) * len(artifact.encoders), desc="encode", unit="text",
                          enabled=self.show_progress) as bar:
            return encode_features(artifact.encoders, list(texts), device=self.settings.device,
                                   max_tokens=self.settings.embed_max_tokens, max_batch=self.settings.embed_max_batch,
                                   on_batch=bar.update)

    def predict_batch(self, texts: Sequence[str], mode: str = "fast", *, features: np.ndarray | None = None,
                      threshold: float | None = None) -> PredictionBatch:
        """Predictions in ``mode``: fast (encoder only), full (every LLM source for every text) or auto
        (LLM sources only for items below the escalation threshold, the stored one by default)."""
        artifact = self._fitted()
        if mode not in MODES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(MODES)}")
        if mode != "fast" and not artifact.llm_sources:
            raise ConfigError(f"mode {mode!r} needs LLM sources and this classifier has none (it was fitted "
                              "encoder-only): use mode fast, or refit with llms=[...]")
        timer = time.perf_counter()
        features = self.features(texts) if features is None else features
        seconds = {"encode": time.perf_counter() - timer}
        decision = artifact.decide(features)
        escalated = np.zeros(len(features), dtype=bool)
        extra: dict = {}
        if mode != "fast":
            cut = artifact.escalation_threshold if threshold is None else threshold
            escalated = np.ones_like(escalated) if mode == "full" else decision.confidence < cut
            rows = np.flatnonzero(escalated)
            if len(rows):
                timer = time.perf_counter()
                usage = self._llm_usage(artifact.llm_sources, [texts[i] for i in rows], artifact.labels,
                                        artifact.multi_label)
                seconds["llm"] = time.perf_counter() - timer
                fused = artifact.decide(features[rows], usage.scores, usage.mask)
                decision = _merge(decision, fused, rows)
                scores = np.zeros((len(features), *usage.scores.shape[1:]), dtype=np.float32)
                mask = np.zeros((len(features), usage.mask.shape[1]), dtype=np.float32)
                scores[rows], mask[rows] = usage.scores, usage.mask
                extra = {"llm_calls": usage.calls, "llm_questions": usage.questions, "llm_spent_usd": usage.spent_usd,
                         "llm_cost_usd": sum(usage.cost_by_source), "llm_cost_by_source": usage.cost_by_source,
                         "llm_scores": scores, "llm_mask": mask}
        names = [[artifact.labels[c] for c in np.flatnonzero(row)] for row in decision.label_matrix]
        return PredictionBatch(decision=decision, labels=names, escalated=escalated,
                               seconds={k: round(v, 3) for k, v in seconds.items()}, **extra)

    def predict(self, texts: Sequence[str], mode: str = "fast") -> list:
        """One label per text (single-label) or a list of labels per text (multi-label)."""
        batch = self.predict_batch(texts, mode)
        return batch.labels if self._fitted().multi_label else [names[0] for names in batch.labels]

    def predict_proba(self, texts: Sequence[str], mode: str = "fast") -> np.ndarray:
        """Calibrated probabilities [N, C], columns in the order of ``artifact_.labels``."""
        return self.predict_batch(texts, mode).decision.probabilities

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> str:
        """Write the artifact (and any fine-tuned backbone) into a new directory; returns its sha256."""
        return save_artifact(Path(path), self._fitted())

    @classmethod
    def load(cls, path: str | Path, *, settings: Settings | None = None,
             expected_sha256: str | None = None) -> "AutoFusionClassifier":
        artifact = load_artifact(Path(path), expected_sha256=expected_sha256)
        clf = cls(labels=artifact.labels, encoders=list(artifact.encoders), llms=list(artifact.llm_sources),
                  multi_label=artifact.multi_label, settings=settings)
        clf.artifact_ = artifact
        clf.report_ = artifact.metrics.get("fit", {})
        return clf

    def publish(self, name: str):
        """Save as the next version of ``name`` under the artifact directory and register it."""
        from shared.db.engine import ensure_schema, session_for
        from shared.db.models import Classifier
        from shared.db.registry import next_version, publish_classifier

        artifact = self._fitted()
        url = self.settings.effective_database_url
        ensure_schema(url)
        with session_for(url) as session, session.begin():
            version = next_version(session=session, name=name)
            directory = self.settings.effective_artifact_dir / name / f"v{version}"
            sha = save_artifact(directory, artifact)
            stored = load_artifact(directory, expected_sha256=sha)  # bundled backbones now live in the artifact
            row = publish_classifier(session=session, row=Classifier(
                name=name, version=version, labels=artifact.labels, multi_label=artifact.multi_label,
                encoder_spec=specs_to_dict(stored.encoders), artifact_uri=str(directory), artifact_sha256=sha,
                metrics={**artifact.metrics, "serving": serving_info(artifact)}))
        log.info("published classifier %s@%d (%s)", name, version, directory)
        return row

    @classmethod
    def from_registry(cls, ref: str, *, settings: Settings | None = None) -> "AutoFusionClassifier":
        from shared.db.engine import ensure_schema, session_for
        from shared.db.registry import find_classifier

        settings = settings or get_settings()
        url = settings.effective_database_url
        ensure_schema(url)
        with session_for(url) as session:
            row = find_classifier(session=session, ref=ref)
            uri, sha = row.artifact_uri, row.artifact_sha256
        return cls.load(uri, settings=settings, expected_sha256=sha)


def _finetune_config(finetune):
    from shared.encoders.finetune import FinetuneConfig

    if finetune is None or isinstance(finetune, FinetuneConfig):
        return finetune
    if isinstance(finetune, str):
        return FinetuneConfig(method=finetune)
    raise ConfigError(f"finetune must be None, 'full', 'lora' or a FinetuneConfig, got {finetune!r}")


def _stack(layer_features: list[dict], blocks: list[tuple[int, int]], part: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Features of ``blocks`` side by side, in the order the final encoders produce them (encoder, then layer)."""
    ordered = sorted(blocks, key=lambda b: b[0])  # stable: within an encoder, the block order is kept
    arrays = [layer_features[i][layer][part] for i, layer in ordered]
    return np.ascontiguousarray(np.concatenate(arrays, axis=1)), tuple(a.shape[1] for a in arrays)


def _merge(base: Decision, update: Decision, rows: np.ndarray) -> Decision:
    probabilities, labels, confidence = base.probabilities.copy(), base.label_matrix.copy(), base.confidence.copy()
    probabilities[rows], labels[rows], confidence[rows] = update.probabilities, update.label_matrix, update.confidence
    return Decision(probabilities=probabilities, label_matrix=labels, confidence=confidence)


def serving_info(artifact: ClassifierArtifact) -> dict:
    """What the service needs to plan a job without opening the artifact: the LLM sources the
    fusion network takes, the calibrated escalation threshold and the cost of one escalation."""
    escalation = artifact.escalation or {}
    return {"llm_sources": list(artifact.llm_sources), "escalation_threshold": escalation.get("threshold"),
            "llm_cost_per_text_usd": escalation.get("llm_cost_per_text_usd")}
