"""AutoFusionClassifier: labelled texts in, a calibrated, layer-aware, LLM-aware classifier out.

One call with defaults (MiniLM, automatic layer and fusion choice, no LLM):

    clf = AutoFusionClassifier().fit("train.csv")
    clf.predict(["some text"])

Every choice can be set (:class:`~shared.fusion.config.AutoFusionConfig`): encoders (several,
encoder-style or decoder LLMs), layers, fusion operator, LLM tiers, fine-tuning, escalation
target. Every selection is made on a validation split (the ``dev`` data, or a stratified share
of the training data), never on test data.

This class is a façade: the search (``fusion.search``), the fine-tuning driver
(``fusion.backbones``), LLM signal gathering (``fusion.llm_signals``) and escalation calibration
(``fusion.escalation``) are plain science; it wires them to the settings, the database's LLM
answer cache and (``publish``/``from_registry``) the registry in ``service.training``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from shared.encoders.hf import encode_features, guess_pooling, pick_device
from shared.encoders.precision import resolve_precision
from shared.encoders.spec import EncoderSpec
from shared.errors import ConfigError, InputError
from shared.fusion.artifact import ClassifierArtifact, load_artifact, save_artifact
from shared.fusion.backbones import finetune_all
from shared.fusion.config import AutoFusionConfig, llm_tier
from shared.fusion.escalation import calibrate_escalation
from shared.fusion.llm_signals import LLMUsage, gather_llm_signals
from shared.fusion.predict import Decision
from shared.fusion.search import EncodeOptions, block_sets, choose, layer_features, split_validation, stack
from shared.fusion.self_training import DEFAULT_TARGET_ACCURACY, pseudo_label, round_report, self_train
from shared.fusion.training import (
    Candidate, Signals, TrainedFusion, encode_targets, split_train_validation, train_fusion,
)
from shared.llm.prompts import PROMPT_VERSION, LabelSet
from shared.llm.sources import LLMSpec, parse_llm_spec, source_spec
from shared.progress import progress_bar
from shared.service.llm_scoring import score_in_process
from shared.service.registry import publish_artifact, registered_artifact
from shared.settings import DEFAULT_ENCODER, Settings, get_settings
from shared.textio import LabelledData, as_labelled, check_known_labels, check_training_data, text_problems
from shared.vocab import Mode

log = logging.getLogger(__name__)

# The modes this class predicts in, in this process (the service adds ``llm``: the LLM alone).
IN_PROCESS_MODES = (Mode.FAST, Mode.FULL, Mode.AUTO)


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


class AutoFusionClassifier:
    """See the module docstring. ``config`` holds every choice; fitted state: ``artifact_`` (what is
    saved and served) and ``report_``."""

    def __init__(
        self,
        labels: Sequence[str] | None = None,
        encoders: str | EncoderSpec | Sequence[str | EncoderSpec] = DEFAULT_ENCODER,
        llms: Sequence[str] = (),
        multi_label: bool | None = None,
        *,
        config: AutoFusionConfig | None = None,
        settings: Settings | None = None,
        show_progress: bool = False,
        **choices,
    ) -> None:
        """``config``, or the same choices as keywords (``layers``, ``pooling``, ``max_length``,
        ``fusion``, ``width``, ``finetune``, ``escalation``, ``training``: see AutoFusionConfig)."""
        if config is not None and (labels or llms or choices or multi_label is not None):
            raise ConfigError("give either config=AutoFusionConfig(...) or the choices as keywords, not both")
        self.config = config or AutoFusionConfig.of(labels=labels, encoders=encoders, llms=llms,
                                                    multi_label=multi_label, **choices)
        self.settings = settings or get_settings()
        self.show_progress = show_progress
        self.artifact_: ClassifierArtifact | None = None
        self.report_: dict = {}
        self._workdir: tempfile.TemporaryDirectory | None = None

    # ------------------------------------------------------------------ fit

    def _prepare(self, train, dev):
        """Check the data and split it: (labels, multi_label, texts, y, val_texts, y_val, report)."""
        config, settings = self.config, self.settings
        data = as_labelled(train, source="train")
        if config.multi_label is False and data.multi_label and any(len(r) != 1 for r in data.labels):
            raise InputError(f"{data.source}: multi_label=False but some rows have several labels")
        multi_label = data.multi_label if config.multi_label is None else config.multi_label
        check_training_data(data, max_chars=settings.max_text_chars)
        labels = list(config.labels) if config.labels else data.label_names()
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
            train_idx, val_idx = split_train_validation(targets, val_fraction=config.training.val_fraction,
                                                        seed=config.training.seed)
            texts, val_texts = [data.texts[i] for i in train_idx], [data.texts[i] for i in val_idx]
            y, y_val = targets[train_idx], targets[val_idx]
            validation_source = f"stratified {config.training.val_fraction:.0%} of {data.source}"
        report: dict = {"n_train": len(texts), "n_validation": len(val_texts), "validation_source": validation_source,
                        "labels": labels, "multi_label": multi_label}
        return labels, multi_label, texts, y, val_texts, y_val, report

    def _encode_options(self) -> EncodeOptions:
        return EncodeOptions(device=self.settings.device, max_tokens=self.settings.embed_max_tokens,
                             max_batch=self.settings.embed_max_batch, show_progress=self.show_progress)

    def layer_report(self, train, dev=None) -> list[dict]:
        """Validation score of a linear probe on every hidden layer of every encoder (no classifier is fitted)."""
        labels, multi_label, texts, y, val_texts, y_val, _ = self._prepare(train, dev)
        specs = [self._base_spec(e, all_layers=True) for e in self.config.encoders]
        features = [layer_features(spec, texts, val_texts, all_layers=True, options=self._encode_options())
                    for spec in specs]
        _, report = block_sets(features, y, y_val, labels=labels, multi_label=multi_label, auto=True,
                               names=self._names(), training=self.config.training, show_progress=self.show_progress)
        return report

    def fit(self, train, dev=None, unlabeled: Sequence[str] | None = None) -> "AutoFusionClassifier":
        """Fit on ``train`` (validation: ``dev``, or a stratified split). ``unlabeled``: texts without
        labels for one round of self-training (:mod:`shared.fusion.self_training`; encoder-only
        classifiers; with ``finetune`` the backbones are tuned again on the pseudo-labels)."""
        config = self.config
        started = time.perf_counter()
        labels, multi_label, texts, y, val_texts, y_val, report = self._prepare(train, dev)
        if unlabeled is not None:
            self._check_unlabeled(unlabeled)

        specs = [self._base_spec(e) for e in config.encoders]
        fitted = self._fit_encoder_network(specs, texts, y, val_texts, y_val, labels, multi_label, report)
        trained, final_specs, candidate = fitted.trained, fitted.specs, fitted.candidate
        train_x, val_x, block_dims, sel, cal = fitted.train_x, fitted.val_x, fitted.block_dims, fitted.sel, fitted.cal

        sources = config.sources
        llm_specs = {source: self._llm_spec(source) for source in sources}
        if sources:
            trained, usage, val_signals, report["llm"] = self._refit_with_llms(
                candidate, llm_specs, texts, val_texts, labels, multi_label, (train_x, y), (val_x, y_val),
                block_dims, sel, cal)
        else:
            usage, val_signals = None, Signals(val_x)
            report["llm"] = None
            log.info("no LLM configured: the classifier is encoder-only (fast mode)")
            if unlabeled and config.finetune is not None:
                fitted, report["self_training"] = self._self_train_backbones(
                    fitted, specs, texts, y, val_texts, y_val, labels, multi_label, list(unlabeled), report)
                trained, final_specs, val_signals = fitted.trained, fitted.specs, Signals(fitted.val_x)
            elif unlabeled:
                trained, report["self_training"] = self._self_train(
                    trained, candidate, final_specs, list(unlabeled), (train_x, y), (val_x, y_val), block_dims, sel, cal)

        self.artifact_ = ClassifierArtifact(
            model=trained.model, temperatures=trained.temperatures, labels=list(labels), multi_label=multi_label,
            encoders=tuple(final_specs), llm_specs={str(k): v.name for k, v in llm_specs.items()},
            label_thresholds=trained.label_thresholds, prompt_version=PROMPT_VERSION if sources else None)
        # the threshold's promise is measured on the calibration rows, which had no say in the choice
        cal_signals = val_signals.subset(cal)
        self.artifact_.escalation = calibrate_escalation(
            self.artifact_, config.escalation, cal_signals.features, y_val[cal], llm_scores=cal_signals.llm_scores,
            llm_mask=cal_signals.llm_mask, llm_cost_per_text=usage.cost_per_text if usage else 0.0)
        report["validation"] = trained.validation
        report["escalation"] = {k: v for k, v in self.artifact_.escalation.items() if k != "curve"}
        report["seconds"] = round(time.perf_counter() - started, 2)
        self.artifact_.metrics = {"validation": trained.validation, "fit": report}
        self.report_ = report
        return self

    def _fit_encoder_network(self, specs: list[EncoderSpec], texts: list[str], y: np.ndarray, val_texts: list[str],
                             y_val: np.ndarray, labels: list[str], multi_label: bool, report: dict, *,
                             round_name: str = "first") -> "_FittedNetwork":
        """Fine-tune the backbones (if configured), encode, and choose layers and fusion on the selection
        rows; fills ``report`` (finetune, candidates, layers, chosen, timings)."""
        config = self.config
        auto = config.layers == "auto"
        if config.finetune is not None:
            if self._workdir is None:
                self._workdir = tempfile.TemporaryDirectory(prefix="fusionq-backbones-")
            # its best epoch is a choice too: made on the rows the search will see, never the calibration ones
            sel, _ = split_validation(y_val, config.training)
            specs, report["finetune"] = finetune_all(
                specs, texts, y, [val_texts[i] for i in sel], y_val[sel], n_classes=len(labels), multi_label=multi_label,
                config=config.finetune, out_dir=Path(self._workdir.name) / round_name, device=self.settings.device,
                show_progress=self.show_progress)
        timer = time.perf_counter()
        features = [layer_features(spec, texts, val_texts, all_layers=auto, options=self._encode_options())
                    for spec in specs]
        report["seconds_encode"] = round(time.perf_counter() - timer, 2)

        timer = time.perf_counter()
        choice = choose(features, y, y_val, labels=labels, multi_label=multi_label, auto=auto, names=self._names(),
                        fusion=config.fusion, width=config.width, training=config.training,
                        show_progress=self.show_progress)
        blocks, report["candidates"] = choice.blocks, choice.rows
        if choice.layer_report:
            report["layers"] = choice.layer_report
        sel, cal = choice.selection_rows, choice.calibration_rows
        report["n_selection"], report["n_calibration"] = len(sel), len(cal)
        final_specs = [replace(spec, layers=tuple(l for i, l in blocks if i == k)) for k, spec in enumerate(specs)]
        train_x, block_dims = stack(features, blocks, 0)  # the winner's features, for an LLM-aware refit
        val_x, _ = stack(features, blocks, 1)
        chosen = next(c for c in report["candidates"] if c["chosen"])
        report["chosen"] = {"layers": {s.display_name: list(s.layers) for s in final_specs}, "candidate": chosen["name"],
                            "val_score": chosen["val_score"]}
        report["seconds_select"] = round(time.perf_counter() - timer, 2)
        return _FittedNetwork(trained=choice.trained, specs=final_specs, candidate=Candidate(
            chosen["operator"], chosen["width"], chosen["hidden"]), val_score=chosen["val_score"], train_x=train_x,
            val_x=val_x, block_dims=block_dims, sel=sel, cal=cal)

    def _self_train_backbones(self, first: "_FittedNetwork", base_specs: list[EncoderSpec], texts: list[str],
                              y: np.ndarray, val_texts: list[str], y_val: np.ndarray, labels: list[str],
                              multi_label: bool, unlabeled: list[str], report: dict) -> tuple["_FittedNetwork", dict]:
        """Self-training with fine-tuning (module docstring of :mod:`shared.fusion.self_training`): the
        first tuned classifier pseudo-labels ``unlabeled``, the base backbones are tuned again on both,
        and the search runs again. The better round by selection score is kept (and its parts of
        ``report``); returns (that round, the self-training report)."""
        timer = time.perf_counter()
        unlabeled_x = self._encode(first.specs, unlabeled, desc="encode unlabeled")
        pseudo = pseudo_label(first.trained, unlabeled_x, (first.val_x[first.cal], y_val[first.cal]))
        log.info("self-training: %d of %d unlabelled texts pseudo-labelled; fine-tuning again on them",
                 len(pseudo.index), len(unlabeled))
        second_report: dict = {}
        second = self._fit_encoder_network(
            base_specs, texts + [unlabeled[i] for i in pseudo.index], np.concatenate([y, pseudo.targets]),
            val_texts, y_val, labels, multi_label, second_report, round_name="second")
        st = round_report(pseudo, DEFAULT_TARGET_ACCURACY, first.val_score, second.val_score)
        keys = ("finetune", "chosen", "seconds_encode", "seconds_select")
        st["backbones"] = "fine-tuned again on the labelled and pseudo-labelled texts"
        st["first_round" if st["kept"] else "second_round"] = {
            k: (report if st["kept"] else second_report).get(k) for k in keys}
        if st["kept"]:
            report.update(second_report)
        # the discarded round's backbones are never served: free their disk now, not when the fit ends
        shutil.rmtree(Path(self._workdir.name) / ("first" if st["kept"] else "second"), ignore_errors=True)
        st["seconds"] = round(time.perf_counter() - timer, 2)
        log.info("self-training: second round %s (selection score %.4f -> %.4f)",
                 "kept" if st["kept"] else "not kept", first.val_score, second.val_score)
        return (second if st["kept"] else first), st

    def _refit_with_llms(self, candidate: Candidate, llm_specs: dict[str, LLMSpec], texts: list[str],
                         val_texts: list[str], labels: list[str], multi_label: bool, train: tuple, val: tuple,
                         block_dims: tuple[int, ...], sel: np.ndarray, cal: np.ndarray):
        """The chosen architecture refitted with the LLM signals beside the winner's features:
        (trained, LLM usage, validation signals, the report's "llm" part)."""
        (train_x, y), (val_x, y_val) = train, val
        usage = self._llm_usage(texts + val_texts, labels, multi_label, llm_specs)
        n = len(texts)
        val_signals = Signals(val_x, usage.scores[n:], usage.mask[n:])
        trained = train_fusion(Signals(train_x, usage.scores[:n], usage.mask[:n]), y, labels=labels,
                               multi_label=multi_label, block_dims=block_dims, llm_sources=self.config.sources,
                               candidates=(candidate,), config=self.config.training,
                               validation=(val_signals.subset(sel), y_val[sel]),
                               calibration=(val_signals.subset(cal), y_val[cal]),
                               members=self.config.training.ensemble)
        log.info("fit asked the LLMs %d new questions (%d answered from the cache), spent $%.4f",
                 usage.calls, usage.questions - usage.calls, usage.spent_usd)
        report = {"sources": {str(k): v.name for k, v in llm_specs.items()}, "calls": usage.calls,
                  "questions": usage.questions, "failed": usage.failed,
                  "spent_usd": round(usage.spent_usd, 6), "cost_per_text_usd": usage.cost_per_text}
        return trained, usage, val_signals, report

    def _self_train(self, trained: TrainedFusion, candidate: Candidate, specs: Sequence[EncoderSpec],
                    unlabeled: list[str], train: tuple, val: tuple, block_dims: tuple[int, ...],
                    sel: np.ndarray, cal: np.ndarray) -> tuple[TrainedFusion, dict]:
        """One round of self-training on ``unlabeled`` (see :func:`self_train`): (kept model, report)."""
        (train_x, y), (val_x, y_val) = train, val
        timer = time.perf_counter()
        unlabeled_x = self._encode(specs, unlabeled, desc="encode unlabeled")
        trained, report = self_train(trained, candidate, (train_x, y), (val_x[sel], y_val[sel]),
                                     (val_x[cal], y_val[cal]), unlabeled_x, block_dims=block_dims,
                                     config=self.config.training)
        report["seconds"] = round(time.perf_counter() - timer, 2)
        log.info("self-training: %d of %d unlabelled texts pseudo-labelled; %s", report["pseudo_labelled"],
                 len(unlabeled), "kept" if report["kept"] else "not kept (selection score fell)")
        return trained, report

    def _check_unlabeled(self, unlabeled: Sequence[str]) -> None:
        if self.config.sources:
            raise ConfigError("self-training (unlabeled texts) is for encoder-only classifiers: drop the LLM "
                              "sources or the unlabeled texts")
        problems = text_problems(unlabeled, max_chars=self.settings.max_text_chars)
        if problems:
            shown = "; ".join(f"data row {i + 1}: {p}" for i, p in problems[:5])
            raise InputError(f"{len(problems)} unlabeled text(s) cannot be used ({shown}): remove or fix them")

    def _encode(self, specs: Sequence[EncoderSpec], texts: list[str], *, desc: str = "encode") -> np.ndarray:
        with progress_bar(total=len(texts) * len(specs), desc=desc, unit="text", enabled=self.show_progress) as bar:
            return encode_features(specs, texts, device=self.settings.device, max_tokens=self.settings.embed_max_tokens,
                                   max_batch=self.settings.embed_max_batch, on_batch=bar.update)

    def _base_spec(self, encoder: str | EncoderSpec, *, all_layers: bool = False) -> EncoderSpec:
        config = self.config
        if isinstance(encoder, EncoderSpec):
            spec = encoder
        else:
            spec = EncoderSpec(model=encoder, pooling=config.pooling or guess_pooling(encoder),
                               max_length=config.max_length,
                               precision=config.precision or self.settings.encoder_precision)
        # resolved now, so every feature of the fit, the artifact and serving share one precision
        spec = replace(spec, precision=resolve_precision(spec.precision, pick_device(self.settings.device)))
        return spec if all_layers or config.layers == "auto" else replace(spec, layers=config.layers)

    def _names(self) -> list[str]:
        return [e.model if isinstance(e, EncoderSpec) else e for e in self.config.encoders]

    def _llm_spec(self, source: str) -> LLMSpec:
        """The LLM answering as tier ``source``: the artifact's, the config's explicit spec, or the configured one."""
        if self.artifact_ is not None and source in self.artifact_.llm_specs:
            return parse_llm_spec(self.artifact_.llm_specs[source])
        explicit = dict(llm_tier(name) for name in self.config.llms).get(source)
        return parse_llm_spec(explicit) if explicit else source_spec(self.settings, source)

    def _llm_usage(self, texts: list[str], labels: list[str], multi_label: bool, specs: dict[str, LLMSpec]) -> LLMUsage:
        """Scores of ``texts`` from every source, through the database's answer cache (a second fit asks nothing new)."""
        label_set = LabelSet(tuple(labels))

        def scorer(source: str, spec: LLMSpec):
            return lambda part: score_in_process(self.settings, spec, labels=label_set, multi_label=multi_label,
                                                 texts=part, show_progress=self.show_progress, desc=f"LLM {source}",
                                                 source=source)

        return gather_llm_signals([scorer(source, spec) for source, spec in specs.items()], texts, len(labels))

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
        return self._encode(self._fitted().encoders, list(texts))

    def predict_batch(self, texts: Sequence[str], mode: str = Mode.FAST, *, features: np.ndarray | None = None,
                      threshold: float | None = None) -> PredictionBatch:
        """Predictions in ``mode``: fast (encoder only), full (every LLM source for every text) or auto
        (LLM sources only for items below the escalation threshold, the stored one by default)."""
        artifact = self._fitted()
        if mode not in IN_PROCESS_MODES:
            raise ConfigError(f"mode {mode!r} is not one of {', '.join(IN_PROCESS_MODES)}")
        if mode != Mode.FAST:
            if not artifact.llm_sources:
                raise ConfigError(f"mode {mode!r} needs LLM sources and this classifier has none (it was fitted "
                                  "encoder-only): use mode fast, or refit with llms=[...]")
            artifact.check_prompt_version()
        timer = time.perf_counter()
        features = self.features(texts) if features is None else features
        seconds = {"encode": time.perf_counter() - timer}
        decision = artifact.decide(features)
        escalated = np.zeros(len(features), dtype=bool)
        extra: dict = {}
        if mode != Mode.FAST:
            cut = artifact.escalation_threshold if threshold is None else threshold
            escalated = np.ones_like(escalated) if mode == Mode.FULL else decision.confidence < cut
            rows = np.flatnonzero(escalated)
            if len(rows):
                timer = time.perf_counter()
                usage = self._llm_usage([texts[i] for i in rows], artifact.labels, artifact.multi_label,
                                        {s: self._llm_spec(s) for s in artifact.llm_sources})
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

    def predict(self, texts: Sequence[str], mode: str = Mode.FAST) -> list:
        """One label per text (single-label) or a list of labels per text (multi-label)."""
        batch = self.predict_batch(texts, mode)
        return batch.labels if self._fitted().multi_label else [names[0] for names in batch.labels]

    def predict_proba(self, texts: Sequence[str], mode: str = Mode.FAST) -> np.ndarray:
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
        """Save as the next version of ``name`` under the artifact directory and register it (the registry row)."""
        return publish_artifact(self.settings, name, self._fitted())

    @classmethod
    def from_registry(cls, ref: str, *, settings: Settings | None = None) -> "AutoFusionClassifier":
        """The registered classifier ``NAME`` (latest) or ``NAME@VERSION``, loaded and verified."""
        settings = settings or get_settings()
        uri, sha = registered_artifact(settings, ref)
        return cls.load(uri, settings=settings, expected_sha256=sha)


@dataclass(frozen=True)
class _FittedNetwork:
    """One round of fit: the chosen, calibrated network, its encoder specs and the winner's features."""

    trained: TrainedFusion
    specs: list[EncoderSpec]
    candidate: Candidate
    val_score: float
    train_x: np.ndarray
    val_x: np.ndarray
    block_dims: tuple[int, ...]
    sel: np.ndarray
    cal: np.ndarray


def _merge(base: Decision, update: Decision, rows: np.ndarray) -> Decision:
    probabilities, labels, confidence = base.probabilities.copy(), base.label_matrix.copy(), base.confidence.copy()
    probabilities[rows], labels[rows], confidence[rows] = update.probabilities, update.label_matrix, update.confidence
    return Decision(probabilities=probabilities, label_matrix=labels, confidence=confidence)
