"""Transformer encoders: text -> frozen features from chosen hidden layers and pooling."""

from shared.encoders.batching import pack_by_tokens
from shared.encoders.spec import EncoderSpec

__all__ = ["EncoderSpec", "pack_by_tokens"]
