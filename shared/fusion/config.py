"""Every choice of an :class:`~shared.service.autofusion.AutoFusionClassifier`, in one frozen value."""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.encoders.finetune import FinetuneConfig
from shared.encoders.spec import EncoderSpec
from shared.errors import ConfigError
from shared.fusion.escalation import EscalationTarget
from shared.fusion.operators import OPERATORS
from shared.fusion.training import TrainingConfig
from shared.settings import DEFAULT_ENCODER
from shared.vocab import Precision, Source, values


@dataclass(frozen=True)
class AutoFusionConfig:
    """What to fit: encoders and their layers, the fusion operator, LLM sources, fine-tuning, targets.

    ``llms``: the LLM tiers the fusion network takes, each ``local`` or ``api`` (the LLM configured
    for that queue) or ``SOURCE=SPEC`` (``local=hf:MODEL``: that model, serving as the ``local``
    tier). Naming the tier is what lets the service escalate to it.
    """

    labels: tuple[str, ...] | None = None
    encoders: tuple[str | EncoderSpec, ...] = (DEFAULT_ENCODER,)
    llms: tuple[str, ...] = ()
    multi_label: bool | None = None
    layers: str | tuple[int, ...] = "auto"
    pooling: str | None = None
    max_length: int = 256
    precision: str | None = None  # None: FUSIONQ_ENCODER_PRECISION
    fusion: str = "auto"
    width: int = 256
    finetune: FinetuneConfig | None = None
    escalation: EscalationTarget = field(default_factory=EscalationTarget)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    @classmethod
    def of(cls, *, labels=None, encoders=DEFAULT_ENCODER, llms=(), layers="auto", finetune=None, **choices
           ) -> "AutoFusionConfig":
        """From the loose forms a caller writes: one encoder or a list, a layer index or a list,
        ``finetune="full"``."""
        return cls(labels=tuple(labels) if labels else None,
                   encoders=(encoders,) if isinstance(encoders, (str, EncoderSpec)) else tuple(encoders),
                   llms=tuple(llms), layers=_layers(layers), finetune=_finetune_config(finetune), **choices)

    def __post_init__(self) -> None:
        if self.fusion != "auto" and self.fusion not in OPERATORS:
            raise ConfigError(f"fusion {self.fusion!r} is not auto or one of {', '.join(OPERATORS)}")
        if isinstance(self.layers, str) and self.layers != "auto":
            raise ConfigError(f"layers {self.layers!r}: give 'auto', a layer index or a list of them")
        if self.precision is not None and self.precision not in values(Precision):
            raise ConfigError(f"precision {self.precision!r} is not one of {', '.join(values(Precision))}")
        if not self.encoders:
            raise ConfigError("give at least one encoder")
        tiers = [llm_tier(name)[0] for name in self.llms]
        if len(set(tiers)) != len(tiers):
            raise ConfigError(f"LLM sources repeat a tier: {list(self.llms)}; each tier ({', '.join(values(Source))}) "
                              "takes one LLM")

    @property
    def sources(self) -> tuple[Source, ...]:
        """The LLM tiers, in the order of ``llms``."""
        return tuple(llm_tier(name)[0] for name in self.llms)


def llm_tier(name: str) -> tuple[Source, str | None]:
    """``local`` -> (local, None: the configured LLM); ``local=hf:MODEL`` -> (local, ``hf:MODEL``).

    A bare spec (``hf:MODEL``) names no tier, so the service could never escalate to it: refused
    with what to write instead.
    """
    source, sep, spec = name.partition("=")
    source = source.strip()
    if source in values(Source) and (not sep or spec.strip()):
        return Source(source), (spec.strip() or None)
    if ":" in name and not sep:
        raise ConfigError(f"LLM {name!r} names no tier: write local={name} (or api={name}) so that the service "
                          "can escalate to it, or set FUSIONQ_LLM_LOCAL / FUSIONQ_LLM_API and use local / api")
    raise ConfigError(f"LLM {name!r}: use {' or '.join(values(Source))}, or SOURCE=SPEC such as local=hf:MODEL")


def _layers(layers):
    if isinstance(layers, str):
        return layers
    return (layers,) if isinstance(layers, int) else tuple(layers)


def _finetune_config(finetune) -> FinetuneConfig | None:
    if finetune is None or isinstance(finetune, FinetuneConfig):
        return finetune
    if isinstance(finetune, str):
        return FinetuneConfig(method=finetune)
    raise ConfigError(f"finetune must be None, 'full', 'lora' or a FinetuneConfig, got {finetune!r}")
