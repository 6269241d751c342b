import importlib.util
import logging

import numpy as np
import pytest
import torch

from shared.encoders.hf import PAD_TO_MULTIPLE_OF, HFEncoder, pool, resolve_model_path
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
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(1, -1), pooling="mean", precision="fp32"))
    assert encoder.dim == 64
    texts = ["a short one", "a much longer text about the league and the goal of the season", "mid length text"]
    together = encoder.encode(texts, max_tokens=4096, max_batch=8)
    alone = np.stack([encoder.encode([t])[0] for t in texts])
    assert together.shape == (3, 64) and together.dtype == np.float32
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_no_texts_give_no_rows(tiny_bert_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(1, -1), precision="fp32"))
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_padded_lengths_are_rounded_and_the_extra_padding_changes_nothing(tiny_bert_path):
    # Rounded lengths bound the shapes the kernels see; the rounding's pad tokens are masked out
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(-1,), pooling="mean", precision="fp32"))
    ids = encoder.encode_pre(["three words here"])
    hidden, mask = encoder.encode_core(ids)
    assert mask.shape[1] % PAD_TO_MULTIPLE_OF == 0 and mask.shape[1] > len(ids[0])
    with torch.inference_mode():
        exact = encoder.model(input_ids=torch.tensor(ids), output_hidden_states=True).hidden_states[-1].mean(1)
    np.testing.assert_allclose(encoder.pooled(hidden, mask).numpy(), exact.numpy(), atol=1e-5)


def test_decoder_last_token_pooling_ignores_padding(tiny_decoder_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_decoder_path, layers=(-2,), pooling="last", precision="fp32"))
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
    with pytest.raises(EncoderError, match="no-such-model': no such directory"):
        HFEncoder(EncoderSpec(model=str(tmp_path / "no-such-model")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EncoderError, match="cannot load encoder"):
        HFEncoder(EncoderSpec(model=str(tmp_path / "empty")))


def test_spec_validation_and_round_trip():
    spec = EncoderSpec(model="m", layers=parse_layers("3,-1"), pooling="last", max_length=128, precision="bf16")
    assert EncoderSpec.from_dict(spec.to_dict()) == spec
    assert spec.key == "m|layers=3,-1|pool=last|max=128|bf16"
    # a spec stored before precision existed was computed in fp32, and keeps its features' key
    legacy = {"model": "m", "layers": [3, -1], "pooling": "last", "max_length": 128, "extra": {}}
    assert EncoderSpec.from_dict(legacy).precision == "fp32"
    assert EncoderSpec.from_dict(legacy).key == "m|layers=3,-1|pool=last|max=128"
    with pytest.raises(ValueError, match="precision 'int4'"):
        EncoderSpec(model="m", precision="int4")
    with pytest.raises(ValueError, match="pooling"):
        EncoderSpec(model="m", pooling="max")
    with pytest.raises(ValueError, match="comma-separated integers"):
        parse_layers("last")


def test_precision_follows_the_hardware(monkeypatch):
    from shared.encoders import precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision.resolve_precision("bf16", cpu) == "bf16" and precision.resolve_precision("fp32", cuda) == "fp32"
    with pytest.raises(EncoderError, match="fp16 is for CUDA devices"):
        precision.resolve_precision("fp16", cpu)
    with pytest.raises(EncoderError, match="precision 'int3'"):
        precision.resolve_precision("int3", cpu)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert precision.resolve_precision("auto", cpu) == "fp32"  # no native bf16: never emulated
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512f", "amx_bf16"}))
    monkeypatch.setattr(precision, "bf16_speedup_on_cpu", lambda: 2.4)
    assert precision.resolve_precision("auto", cpu) == "bf16"
    monkeypatch.setattr(precision, "bf16_speedup_on_cpu", lambda: 1.02)
    assert precision.resolve_precision("auto", cpu) == "fp32"  # the flags say yes, the measured check says no


def test_a_precision_asked_for_by_name_says_when_this_cpu_runs_it_slowly(monkeypatch, caplog):
    from shared.encoders import precision

    cpu = torch.device("cpu")

    def resolved_with(flags, speedup, asked):
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(precision, "bf16_speedup_on_cpu", lambda: speedup)
        precision._warn_once.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=precision.__name__):
            assert precision.resolve_precision(asked, cpu) == asked  # used as asked, never swapped
        return " ".join(r.getMessage() for r in caplog.records)

    assert "no native bf16" in resolved_with({"avx2", "fma"}, 99.0, "bf16")  # no flag: known slow, not timed
    assert "ran 2.0x slower than fp32 in a check" in resolved_with({"avx512_bf16"}, 0.5, "bf16")
    assert resolved_with({"amx_bf16"}, 2.4, "bf16") == ""  # native and faster: nothing to say
    assert resolved_with({"avx2"}, 99.0, "fp32") == ""
    if importlib.util.find_spec("onnxruntime"):
        assert "int8 ran no faster than fp32" in resolved_with({"avx2", "fma"}, 1.0, "int8")
        assert resolved_with({"avx2", "avx512_vnni"}, 1.0, "int8") == ""


def test_fine_tuning_arithmetic_follows_the_specs_precision(monkeypatch):
    from shared.encoders import precision
    from shared.encoders.finetune import training_autocast_dtype

    cpu = torch.device("cpu")
    assert training_autocast_dtype(EncoderSpec(model="m", precision="bf16"), cpu) == "bf16"
    assert training_autocast_dtype(EncoderSpec(model="m", precision="fp32"), cpu) == "fp32"
    assert training_autocast_dtype(EncoderSpec(model="m", precision="bf16"), torch.device("cuda")) == "bf16"
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    assert training_autocast_dtype(EncoderSpec(model="m", precision="auto"), cpu) == "fp32"  # no native bf16
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    monkeypatch.setattr(precision, "bf16_speedup_on_cpu", lambda: 2.0)
    assert training_autocast_dtype(EncoderSpec(model="m", precision="auto"), cpu) == "bf16"


def test_the_measured_check_and_the_cpu_description_are_real():
    from shared.encoders.precision import bf16_speedup_on_cpu, cpu_description

    assert bf16_speedup_on_cpu() > 0
    assert "[" in cpu_description() and "unknown CPU" not in cpu_description()


def test_bf16_features_agree_with_fp32_and_the_spec_says_which(minilm_path):
    """The real MiniLM in both precisions: the same meaning, the spec records the precision used."""
    texts = ["The striker scored twice in the final.", "The central bank raised interest rates.",
             "A new chip doubles the battery life of phones."] * 3
    fp32 = HFEncoder(EncoderSpec(model=minilm_path, precision="fp32"))
    bf16 = HFEncoder(EncoderSpec(model=minilm_path, precision="bf16"))
    assert bf16.spec.precision == "bf16" and bf16.model.dtype == torch.bfloat16
    assert fp32.spec.key != bf16.spec.key  # features of the two precisions are never mixed in the store
    a, b = fp32.encode(texts), bf16.encode(texts)
    assert b.dtype == np.float32
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999, cosine


def test_auto_is_resolved_before_features_are_made(tiny_bert_path):
    encoder = HFEncoder(EncoderSpec(model=tiny_bert_path))
    assert encoder.spec.precision in ("fp32", "bf16") and "auto" not in encoder.spec.key


def test_batch_budget_is_sized_for_the_device_unless_set():
    from shared.encoders.hf import CPU_BATCH_BUDGET, CUDA_BATCH_BUDGET, batch_budget

    assert batch_budget(torch.device("cpu")) == CPU_BATCH_BUDGET == (4096, 32)
    assert batch_budget(torch.device("cuda")) == CUDA_BATCH_BUDGET  # a device object only: no GPU needed
    assert batch_budget(torch.device("cuda"), 1024, None) == (1024, CUDA_BATCH_BUDGET[1])
    assert batch_budget(torch.device("cpu"), None, 8) == (4096, 8)
    assert batch_budget(torch.device("cuda"), None, 8, default=(2048, 64)) == (2048, 8)


def test_cuda_token_budget_shrinks_to_the_memory_left_free():
    from shared.encoders.hf import CUDA_BATCH_BUDGET, CUDA_MIN_TOKENS, default_budget

    cuda = torch.device("cuda")
    gib = 1 << 30
    # MiniLM-L6 in bf16 on a big card: (7 hidden states + 8) x 384 x 2 bytes a token fits the ceiling
    assert default_budget(cuda, free_bytes=130 * gib, bytes_per_token=15 * 384 * 2) == CUDA_BATCH_BUDGET
    # a 7B decoder (33 hidden states, 4096 wide, bf16) with 24 GiB left: a quarter of it, rounded down
    tokens, texts = default_budget(cuda, free_bytes=24 * gib, bytes_per_token=41 * 4096 * 2)
    assert tokens == 16384 and tokens * 41 * 4096 * 2 <= 24 * gib / 4 and texts == CUDA_BATCH_BUDGET[1]
    assert default_budget(cuda, free_bytes=1, bytes_per_token=10**6)[0] == CUDA_MIN_TOKENS  # never below the floor
    assert default_budget(torch.device("cpu"), free_bytes=gib, bytes_per_token=1) == (4096, 32)


@pytest.mark.parametrize("side", ["right", "left"])
def test_our_padding_is_what_the_tokenizer_pads(tiny_decoder_path, side):
    # pad_tokens replaced tokenizer.pad on the hot path (a fortieth of its cost): same tensors, either side
    from shared.encoders.hf import load_tokenizer, pad_tokens

    tokenizer = load_tokenizer(tiny_decoder_path)
    tokenizer.padding_side = side
    batch = tokenizer(["one", "a longer text of several words here", "two words"])["input_ids"]
    expected = tokenizer.pad({"input_ids": batch}, return_tensors="np", pad_to_multiple_of=PAD_TO_MULTIPLE_OF)
    ids, mask = pad_tokens(tokenizer, batch)
    np.testing.assert_array_equal(ids, expected["input_ids"])
    np.testing.assert_array_equal(mask, expected["attention_mask"])


def test_a_fine_tuned_spec_is_named_by_its_origin():
    plain = EncoderSpec(model="/models/all-MiniLM-L6-v2")
    assert plain.display_name == "/models/all-MiniLM-L6-v2" and plain.short_name == "all-MiniLM-L6-v2"
    tuned = EncoderSpec(model="/tmp/fusionq-backbones-x/first/0", extra={"finetuned_from": "/models/all-MiniLM-L6-v2"})
    assert tuned.display_name == "/models/all-MiniLM-L6-v2, fine-tuned"
    assert tuned.short_name == "all-MiniLM-L6-v2, fine-tuned"


def test_fine_tuning_validation_scores_rows_in_their_own_order_whatever_the_batching():
    # batches are cut from length-sorted rows; each row's logits must still meet its own target
    from shared.encoders.finetune import _validation_score
    from shared.metrics import score_logits

    val_ids = [[1] * n for n in (5, 1, 9, 3, 7, 2)]
    targets = np.array([1, 0, 1, 0, 1, 0])

    def forward(batch):  # class 1 for long rows, row by row: a misplaced row would change the score
        return torch.tensor([[4.0 - len(x), len(x) - 4.0] for x in batch])

    module = torch.nn.Linear(1, 1)
    expected = score_logits(forward(val_ids).numpy(), targets, False)
    assert expected == 1.0
    assert _validation_score(forward, module, module, val_ids, targets, False, batch_size=4) == expected
