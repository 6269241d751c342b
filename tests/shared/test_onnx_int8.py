"""Encoder precision int8 (ONNX Runtime dynamic quantization) on tiny random models: the features
match fp32 layer by layer, the exported model is cached and never loaded half-written, and the
cases it cannot serve are clear errors."""

import sys

import numpy as np
import pytest
import torch

from shared.encoders import onnx_int8
from shared.encoders.finetune import FinetuneConfig, finetune_backbone
from shared.encoders.hf import HFEncoder
from shared.encoders.precision import resolve_precision
from shared.encoders.spec import EncoderSpec
from shared.errors import EncoderError
from tests.conftest import make_topic_texts

# Lengths from 1 to ~30 tokens: longer than the 16 the export traced with, and batches of 4 leave
# a remainder, so the dynamic batch and length axes are exercised.
TEXTS = ["The striker scored twice in the final.", "Rates rose.",
         "A new chip doubles the battery life of phones and laptops across the market this year, analysts said.",
         "x", "Shares of the bank fell after the merger was called off by regulators in Brussels on Monday.",
         "The telescope found a molecule in orbit.", "Coach and referee argued."] * 2


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(autouse=True)
def onnx_cache(monkeypatch, shared_cache):
    """Exports go to a temporary cache, never ~/.cache (tests that count exports set a fresh one)."""
    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(shared_cache))
    return shared_cache


@pytest.fixture(scope="module")
def layered_bert_path(tmp_path_factory, minilm_path) -> str:
    """conftest's tiny BERT, initialised 10x wider (initializer_range 0.2): at the default 0.02 each
    layer barely moves the residual stream, so layers 0, 1 and 2 are near-identical and a test could
    not tell one from another; here they differ (centred cosine ~0.4 between layers)."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("layered-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, initializer_range=0.2)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def centred_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-text cosine after removing each side's mean over the texts: the component every text of a
    random model shares would otherwise make any two layers look alike."""
    a, b = a - a.mean(0), b - b.mean(0)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def count_exports(monkeypatch) -> list:
    calls = []
    real = onnx_int8.export_fp32

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_int8, "export_fp32", counting)
    return calls


def test_every_layer_index_maps_as_in_fp32(layered_bert_path):
    layers = (0, 1, 2, -1, -2, -3)
    int8 = HFEncoder(EncoderSpec(model=layered_bert_path, layers=layers, precision="int8"))
    fp32 = HFEncoder(EncoderSpec(model=layered_bert_path, layers=(0, 1, 2), precision="fp32"))
    assert int8.spec.precision == "int8" and int8.spec.key.endswith("|int8")
    a, b = fp32.encode(TEXTS, max_batch=4), int8.encode(TEXTS, max_batch=4)
    assert b.shape == (len(TEXTS), 6 * 32) and b.dtype == np.float32
    fp32_layer = {k: a[:, 32 * k:32 * (k + 1)] for k in range(3)}
    # the model's layers really differ, so the checks below can tell a wrong layer from the right one
    assert centred_cosine(fp32_layer[1], fp32_layer[2]).mean() < 0.8
    for i, layer in enumerate(layers):
        got = b[:, 32 * i:32 * (i + 1)]
        similarity = {k: centred_cosine(fp32_layer[k], got).mean() for k in range(3)}
        assert max(similarity, key=similarity.get) == layer % 3, (layer, similarity)
        assert centred_cosine(fp32_layer[layer % 3], got).min() > 0.99, (layer, similarity)


def test_int8_features_of_the_shared_tiny_bert_agree_with_fp32(tiny_bert_path):
    int8 = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(1, -1), precision="int8"))
    fp32 = HFEncoder(EncoderSpec(model=tiny_bert_path, layers=(1, -1), precision="fp32"))
    a, b = fp32.encode(TEXTS), int8.encode(TEXTS)
    assert b.shape == a.shape == (len(TEXTS), 64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999, cosine
    # Batching barely matters: activations are quantized with one scale per batch, so other texts
    # (and padding) nudge a text's features, far less than quantization itself does
    alone = int8.encode(TEXTS, max_batch=1)
    assert np.abs(alone - b).max() < 0.01 and np.abs(alone - b).max() < np.abs(a - b).max()
    # another layer of the same loaded model shares its session
    other = int8.with_layers((0,))
    assert other.model is int8.model and other.encode(TEXTS[:2]).shape == (2, 32)


def test_a_decoder_llm_read_at_its_last_token_exports_too(tiny_decoder_path):
    """The causal mask and rotary positions survive the export: padded batches still read each
    text's own last token."""
    int8 = HFEncoder(EncoderSpec(model=tiny_decoder_path, layers=(-1,), pooling="last", precision="int8"))
    fp32 = HFEncoder(EncoderSpec(model=tiny_decoder_path, layers=(-1,), pooling="last", precision="fp32"))
    a, b = fp32.encode(TEXTS, max_batch=4), int8.encode(TEXTS, max_batch=4)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999, cosine  # another layer, or another token, scores 0.9 or less
    assert centred_cosine(a, b).min() > 0.99


def test_the_second_load_uses_the_cache_and_the_key_follows_the_bytes(tiny_bert_path, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(tmp_path / "cache"))
    exports = count_exports(monkeypatch)
    first = HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8")).encode(TEXTS)
    assert len(exports) == 1
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [
        f"{onnx_int8.cache_key(onnx_int8.local_model_dir(tiny_bert_path))}.int8.onnx"]  # no temporary file left
    again = HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8")).encode(TEXTS)
    assert len(exports) == 1 and np.array_equal(first, again)
    # The key is the content: a copy elsewhere (new path, new mtimes) shares it, a changed config does not
    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_path, copy)
    assert onnx_int8.cache_key(copy) == onnx_int8.cache_key(onnx_int8.local_model_dir(tiny_bert_path))
    (copy / "config.json").write_text((copy / "config.json").read_text().replace('"hidden_act"', ' "hidden_act"'))
    assert onnx_int8.cache_key(copy) != onnx_int8.cache_key(onnx_int8.local_model_dir(tiny_bert_path))


def test_a_damaged_cache_file_is_rebuilt_not_used(tiny_bert_path, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(tmp_path / "cache"))
    exports = count_exports(monkeypatch)
    good = HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8")).encode(TEXTS)
    [cached] = (tmp_path / "cache").iterdir()
    data = cached.read_bytes()
    cached.write_bytes(data[: len(data) // 2])  # as a disk fault or a copy cut short would leave it
    rebuilt = HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8")).encode(TEXTS)
    assert len(exports) == 2 and np.array_equal(good, rebuilt)
    assert cached.read_bytes() == data


def test_a_crash_while_writing_leaves_nothing_under_the_loaded_name(tiny_bert_path, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(tmp_path / "cache"))

    def crash_halfway(fp32_file, int8_file):
        int8_file.write_bytes(b"\x08\x07half an onnx model")
        raise MemoryError("killed while writing")

    real_quantize = onnx_int8.quantize
    monkeypatch.setattr(onnx_int8, "quantize", crash_halfway)
    with pytest.raises(EncoderError, match="int8 export of encoder .* failed .*killed while writing"):
        HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8"))
    assert list((tmp_path / "cache").iterdir()) == []
    monkeypatch.setattr(onnx_int8, "quantize", real_quantize)
    assert HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8")).encode(TEXTS[:2]).shape == (2, 32)


def test_a_model_that_cannot_be_exported_is_named_with_the_cause(tiny_bert_path, tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(tmp_path / "cache"))

    def unsupported(*args, **kwargs):
        raise RuntimeError("Exporting the operator 'aten::frobnicate' is not supported")

    monkeypatch.setattr(torch.onnx, "export", unsupported)
    with pytest.raises(EncoderError, match=r"int8 export of encoder '.*tiny-bert.*' failed \(RuntimeError: "
                                           r"Exporting the operator 'aten::frobnicate'.*use precision fp32 or bf16"):
        HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8"))


def test_a_cache_folder_that_cannot_be_made_names_the_setting(tiny_bert_path, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(blocker / "cache"))
    with pytest.raises(EncoderError, match=onnx_int8.CACHE_ENV):
        HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8"))


def test_int8_is_refused_on_cuda_and_without_onnxruntime(tiny_bert_path, monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("int8", cpu) == "int8"
    assert resolve_precision("auto", cpu) != "int8"  # lossy and optional: only asked for, never chosen
    with pytest.raises(EncoderError, match="int8 is a CPU path .* on CUDA use fp16 or bf16"):
        resolve_precision("int8", torch.device("cuda"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed: import raises
    with pytest.raises(EncoderError, match=r"ONNX Runtime, which is not installed .*pip install 'fusionq\[onnx\]'"):
        resolve_precision("int8", cpu)
    with pytest.raises(EncoderError, match=r"pip install 'fusionq\[onnx\]'"):
        HFEncoder(EncoderSpec(model=tiny_bert_path, precision="int8"))
    assert resolve_precision("fp32", cpu) == "fp32"  # the other precisions do not need it


def test_fine_tuning_an_int8_spec_refuses_early_without_onnxruntime(tiny_bert_path, tmp_path, monkeypatch):
    from shared.encoders import finetune

    monkeypatch.setattr(finetune, "_load_backbone", lambda *a: pytest.fail("training started"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    texts, _ = make_topic_texts(2)
    y = np.zeros(len(texts), dtype=np.int64)
    with pytest.raises(EncoderError, match=r"pip install 'fusionq\[onnx\]'"):
        finetune_backbone(EncoderSpec(model=tiny_bert_path, precision="int8"), texts, y, texts, y, n_classes=2,
                          multi_label=False, out_dir=tmp_path / "tuned", config=FinetuneConfig(epochs=1))


def test_fine_tuning_trains_in_fp32_and_serves_the_tuned_backbone_in_int8(sqlite_settings, tiny_bert_path, tmp_path,
                                                                         monkeypatch):
    from shared.fusion.training import TrainingConfig
    from shared.service.autofusion import AutoFusionClassifier

    monkeypatch.setenv(onnx_int8.CACHE_ENV, str(tmp_path / "cache"))
    clf = AutoFusionClassifier(encoders=tiny_bert_path, layers=-1, precision="int8", settings=sqlite_settings,
                               finetune=FinetuneConfig(epochs=1, batch_size=8),
                               training=TrainingConfig(max_epochs=5, patience=2)).fit(make_topic_texts(8))
    [spec] = clf.artifact_.encoders
    assert spec.precision == "int8" and spec.key.endswith("|int8") and spec.model != tiny_bert_path
    # the features came from the fine-tuned weights' int8 export, not the base model's
    tuned_key = onnx_int8.cache_key(onnx_int8.local_model_dir(spec.model))
    assert tuned_key != onnx_int8.cache_key(onnx_int8.local_model_dir(tiny_bert_path))
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{tuned_key}.int8.onnx"]


def test_weights_lose_a_bit_only_on_x86_cpus_without_vnni(monkeypatch):
    from shared.encoders import onnx_int8, precision

    for flags, expected in ((("avx2", "fma"), True), (("avx2", "avx512_vnni"), False), (("avx2", "avx_vnni"), False),
                            (("avx2", "amx_int8"), False), ((), False), (("neon",), False)):
        monkeypatch.setattr(precision, "cpu_flags", lambda flags=flags: frozenset(flags))
        assert onnx_int8.reduced_range() is expected, flags
