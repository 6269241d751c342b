"""Turning LLM answers into class probabilities: renormalised logprobs, or parsed JSON votes.

Nothing here ever guesses a default class: an answer that does not parse is a failure.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence

from shared.errors import LLMAnswerError


def normalise_token(token: str) -> str:
    """Tokens arrive as ' A', 'A', 'Ġyes' or 'Yes'; compare on the stripped text."""
    return token.replace("Ġ", "").replace("▁", "").strip()


def renormalise(logprobs: Sequence[float]) -> tuple[float, ...]:
    """Softmax over the classes' log-probabilities (numerically stable)."""
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return tuple(w / total for w in weights)


def key_logprobs(top_logprobs: Iterable[tuple[str, float]], keys: Sequence[str], *, case_sensitive: bool) -> list[float | None]:
    """Log-probability of each key among the top tokens (variants like ' A' summed); None if absent."""
    found: dict[str, float] = {}
    for token, logprob in top_logprobs:
        text = normalise_token(token)
        if not case_sensitive:
            text = text.lower()
        if text in keys:
            found[text] = logprob if text not in found else math.log(math.exp(found[text]) + math.exp(logprob))
    return [found.get(k if case_sensitive else k.lower()) for k in keys]


def probabilities_from_top_logprobs(top_logprobs: list[tuple[str, float]], keys: Sequence[str]) -> tuple[float, ...]:
    """Class probabilities from the first answer token's top log-probabilities.

    Keys missing from the top list get the smallest log-probability seen (an upper bound on
    theirs), so they are possible but unlikely. No key at all -> :class:`LLMAnswerError`.
    """
    values = key_logprobs(top_logprobs, keys, case_sensitive=True)
    if all(v is None for v in values):
        shown = ", ".join(repr(t) for t, _ in top_logprobs[:5])
        raise LLMAnswerError(f"no answer key ({', '.join(keys[:5])}...) among the top tokens ({shown})")
    floor = min(lp for _, lp in top_logprobs)
    return renormalise([floor if v is None else v for v in values])


def yes_probability(top_logprobs: list[tuple[str, float]]) -> float:
    """P(yes) / (P(yes) + P(no)) from the top tokens; neither present -> :class:`LLMAnswerError`."""
    yes, no = key_logprobs(top_logprobs, ("yes", "no"), case_sensitive=False)
    if yes is None and no is None:
        raise LLMAnswerError(f"neither yes nor no among the top tokens ({', '.join(repr(t) for t, _ in top_logprobs[:5])})")
    floor = min(lp for _, lp in top_logprobs)
    return renormalise([floor if yes is None else yes, floor if no is None else no])[0]


_JSON_OBJECT = re.compile(r"\{.*?\}", re.DOTALL)


def parse_vote(content: str | None, keys: Sequence[str], *, multi_label: bool) -> tuple[float, ...]:
    """A JSON answer -> a one-hot (single) or multi-hot (multi) vote vector over ``keys``.

    Accepts exactly one JSON object with ``label`` (a key) or ``labels`` (a list of keys),
    possibly wrapped in a code fence. Anything else raises :class:`LLMAnswerError`.
    """
    if not content or not content.strip():
        raise LLMAnswerError("empty answer")
    match = _JSON_OBJECT.search(content)
    if match is None:
        raise LLMAnswerError(f"no JSON object in the answer {content[:80]!r}")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise LLMAnswerError(f"unparseable JSON in the answer {content[:80]!r}") from exc
    field = "labels" if multi_label else "label"
    if not isinstance(data, dict) or field not in data:
        raise LLMAnswerError(f"the answer has no {field!r} field: {content[:80]!r}")
    chosen = data[field] if multi_label else [data[field]]
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise LLMAnswerError(f"{field!r} must be {'a list of letters' if multi_label else 'a letter'}: {content[:80]!r}")
    unknown = [c for c in chosen if c.strip() not in keys]
    if unknown:
        raise LLMAnswerError(f"the answer names classes that do not exist: {unknown}")
    picked = {c.strip() for c in chosen}
    return tuple(1.0 if k in picked else 0.0 for k in keys)
