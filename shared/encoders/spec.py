"""What an encoder is: model, layers, pooling, length. Frozen, JSON round-trippable."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from shared.vocab import Pooling, Precision, values

@dataclass(frozen=True, kw_only=True)
class EncoderSpec:
    """A frozen encoder configuration.

    ``layers`` index ``hidden_states`` (0 = embeddings, -1 = last layer; several are
    concatenated). ``pooling``: ``mean`` over the attention mask, ``cls`` (first token) or
    ``last`` (last real token; what decoder LLMs need). ``precision``: ``auto`` is resolved to
    a concrete one (:func:`shared.encoders.precision.resolve_precision`) before features are made,
    so a trained classifier's spec says what its features were computed in, and serving uses the same.
    """

    model: str
    layers: tuple[int, ...] = (-1,)
    pooling: str = Pooling.MEAN
    max_length: int = 256
    precision: str = Precision.AUTO
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.model or not isinstance(self.model, str):
            raise ValueError("EncoderSpec.model must be a Hugging Face model id or a local path")
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))
        if not self.layers:
            raise ValueError("EncoderSpec.layers must name at least one hidden-state index")
        if self.pooling not in values(Pooling):
            raise ValueError(f"pooling {self.pooling!r} is not one of {', '.join(values(Pooling))}")
        if self.precision not in values(Precision):
            raise ValueError(f"precision {self.precision!r} is not one of {', '.join(values(Precision))}")
        if self.max_length < 2:
            raise ValueError("EncoderSpec.max_length must be at least 2 tokens")

    @property
    def display_name(self) -> str:
        """The model as people know it: a backbone fine-tuned here lives in a temporary or artifact
        folder, so it is named by what it was tuned from."""
        origin = self.extra.get("finetuned_from")
        return f"{origin}, fine-tuned" if origin else self.model

    @property
    def short_name(self) -> str:
        """:attr:`display_name` without the folders, for progress bars."""
        origin = self.extra.get("finetuned_from")
        return f"{Path(origin).name}, fine-tuned" if origin else Path(self.model).name

    @property
    def key(self) -> str:
        """Stable identity of the features this spec produces (used to store and find them)."""
        layers = ",".join(str(x) for x in self.layers)
        key = f"{self.model}|layers={layers}|pool={self.pooling}|max={self.max_length}"
        return key if self.precision == Precision.FP32 else f"{key}|{self.precision}"  # fp32 keys predate precision

    def to_dict(self) -> dict:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "EncoderSpec":
        known = {k: v for k, v in data.items() if k in ("model", "layers", "pooling", "max_length", "precision", "extra")}
        return cls(**{"precision": Precision.FP32, **known})  # specs stored before precision existed were fp32


def parse_layers(text: str) -> tuple[int, ...]:
    """``"-1"`` or ``"4,6,-1"`` -> a tuple of layer indices, with a clear error otherwise."""
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ValueError(f"layers {text!r}: give comma-separated integers such as -1 or 3,5,-1") from exc


# A classifier reads one or more encoders; its feature vector is their outputs concatenated in order.

def features_key(specs: tuple[EncoderSpec, ...] | list[EncoderSpec]) -> str:
    """Identity of the concatenated features of ``specs`` (one encoder: its own key)."""
    return " || ".join(spec.key for spec in specs)


def specs_to_dict(specs: tuple[EncoderSpec, ...] | list[EncoderSpec]) -> dict:
    return {"encoders": [spec.to_dict() for spec in specs]}


def specs_from_dict(data: dict) -> tuple[EncoderSpec, ...]:
    """Inverse of :func:`specs_to_dict`; also reads the bare single-spec dict that registry rows held before classifiers could fuse several encoders."""
    if "encoders" in data:
        return tuple(EncoderSpec.from_dict(d) for d in data["encoders"])
    return (EncoderSpec.from_dict(data),)
