import numpy as np
import pytest

from shared.llm.hf import HFScorer
from shared.llm.prompts import LabelSet

LABELS = LabelSet(("sports", "business", "science"), descriptions=("games", "money", "research"))
TEXTS = ["The football league held nine teams", "The stock market rose", "x", "science " * 40]


def test_probabilities_are_finite_sum_to_one_and_respond_to_the_text(tiny_causal_lm_path):
    scorer = HFScorer(tiny_causal_lm_path, batch_size=3)
    batch = scorer.score(TEXTS, LABELS)
    probs, present = batch.matrix()
    assert present.tolist() == [1, 1, 1, 1]
    assert np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-5)
    assert not np.allclose(probs[0], probs[1])  # a random model still reacts to its input
    assert all(s.method == "logprobs" and s.tokens_in > 0 for s in batch.scores)


def test_shared_prefix_equals_the_naive_computation(tiny_causal_lm_path):
    scorer = HFScorer(tiny_causal_lm_path, batch_size=2)
    cached, _ = scorer.score(TEXTS, LABELS).matrix()
    naive, _ = scorer.score(TEXTS, LABELS, reuse_prefix=False).matrix()
    np.testing.assert_allclose(cached, naive, atol=1e-5)
    multi_cached, _ = scorer.score(TEXTS, LABELS, multi_label=True).matrix()
    multi_naive, _ = scorer.score(TEXTS, LABELS, multi_label=True, reuse_prefix=False).matrix()
    np.testing.assert_allclose(multi_cached, multi_naive, atol=1e-5)
    assert ((multi_cached > 0) & (multi_cached < 1)).all()


def test_multi_token_answers_are_scored_exactly(tiny_causal_lm_path):
    scorer = HFScorer(tiny_causal_lm_path)
    import torch

    context = scorer._ids("The stock market")
    answer = scorer._ids(" rose sharply")
    assert len(answer) > 1  # really a multi-token answer
    whole = scorer._sequence_logprob(context, answer)
    # The chain rule, one forward pass per answer token: log P(a1 | c) + log P(a2 | c, a1) + ...
    expected = 0.0
    for k, token in enumerate(answer):
        with torch.inference_mode():
            logits = scorer.model(input_ids=torch.tensor([context + answer[:k]], device=scorer.device)).logits
        expected += float(torch.log_softmax(logits[0, -1].float(), dim=-1)[token])
    assert whole == pytest.approx(expected, abs=1e-4)
    assert whole < 0
