import numpy as np
import pytest
import torch

from shared.encoders.hf import HFEncoder, pool, resolve_model_path
from shared.encoders.spec import EncoderSpec, parse_layers
from shared.errors import EncoderError


def test_default_minilm_resolves_offline_to_packaged_weights(minilm_path):
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == minilm_path


def test_pooling_by_mask():
    hidden = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)  # rows: [0,1,2], [3,4,5]
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # second row left-padded
    assert pool(hidden, mask, "mean").flatten().tolist() == [0.5, 4.5]
    assert pool(hidden, mask, "cls").flatten().tolist() == [0.0, 3.0]
    assert pool(hidden, mask, "last").flatten().tolist() == [1.0, 5.0]


def test_bert_layers_concatenate_and_batching_does_not_change_features(tiny_bert_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(1, -1), pooling="mean"))
    assert encoder.dim == 64
    texts = ["a short one", "a much longer text about the league and the goal of the season", "mid length text"]
    together = encoder.encode(texts, max_tokens=4096, max_batch=8)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert together.shape == (3, 64) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_decoder_last_token_pooling_ignores_padding(tiny_decoder_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_decoder_path, layers=(-2,), pooling="last"))
    texts = ["The stock market rose", "The football league held nine teams play in the league today"]
    together = encoder.encode(texts, max_batch=8)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-4)
    assert np.isfinite(together).all() and not np.allclose(together[0], together[1])


def test_minilm_features_reflect_meaning(minilm_path):
    encoder = HFEncoder(EncoderSpec(model="sentence-transformers/all-MiniLM-L6-v2"))
    a, b, c = encoder.encode(["The striker scored twice in the final.", "A forward netted two goals in the cup final.",
                              "The central bank raised interest rates."])

    def cos(x, y):
        return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))

    assert cos(a, b) > cos(a, c) + 0.2


def test_huge_text_is_truncated_not_choked_on(tiny_bert_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path, max_length=64))
    ids = encoder.encode_pre(["word " * 2_000_000])
    assert len(ids[0]) == 64


def test_out_of_range_layer_and_missing_model_are_clear_errors(tiny_bert_path, tmp_path):
    with pytest.raises(EncoderError, match="hidden states 0..2 .* layer 7 is out of range"):
        HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(7,)))
    with pytest.raises(EncoderError, match="cannot load encoder"):
        HFEncoder(EncoderSpec(model=str(tmp_path / "no-such-model")))


def test_spec_validation_and_round_trip():
    spec = EncoderSpec(model="m", layers=parse_layers("3,-1"), pooling="last", max_length=128)
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert spec.key == "m|layers=3,-1|pool=last|max=128"
    with pytest.raises(ValueError, match="pooling"):
        EncoderSpec(model="m", pooling="max")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_layers("last")
