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


def generated_part(content: str, sent: Sequence[str] = ()) -> str:
    """What the model generated: ``content`` after the last echo of any message we ``sent``.

    Some servers (``transformers serve`` with some chat templates) return the rendered prompt
    before the answer. Each sent message is looked for verbatim, then with its whitespace
    loosened (templates re-wrap lines); the answer is what follows the furthest echo found.
    """
    end = 0
    for part in sent:
        part = (part or "").strip()
        if not part:
            continue
        found = content.rfind(part)
        if found >= 0:
            end = max(end, found + len(part))
            continue
        words = part.split()
        loose = None
        for loose in re.finditer(r"\s+".join(map(re.escape, words)), content):
            pass
        if loose is not None:
            end = max(end, loose.end())
    return content[end:]


def _json_objects(text: str):
    """Every top-level JSON object in ``text``, left to right: (parsed value or None, its source)."""
    decoder = json.JSONDecoder()
    i = text.find("{")
    while i >= 0:
        try:
            value, stop = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            yield None, text[i:i + 40]
            i = text.find("{", i + 1)
            continue
        yield value, text[i:stop]
        i = text.find("{", stop)


def parse_vote(content: str | None, keys: Sequence[str], *, multi_label: bool,
               sent: Sequence[str] = ()) -> tuple[float, ...]:
    """A JSON answer -> a one-hot (single) or multi-hot (multi) vote vector over ``keys``.

    Reads only what the model generated: an echo of the ``sent`` messages is cut off first. The
    answer is the last JSON object with ``label`` (a key) or ``labels`` (a list of keys), possibly
    in a code fence; objects that are not such an answer (the prompt's ``"<letter>"`` format
    example, a class that does not exist, broken JSON) are skipped. No answer at all raises
    :class:`LLMAnswerError`, naming the last reason an object was refused.
    """
    if not content or not content.strip():
        raise LLMAnswerError("empty answer")
    generated = generated_part(content, sent)
    if not generated.strip():
        raise LLMAnswerError(f"the answer only echoed the prompt: {content[-80:]!r}")
    answer, problem = None, f"no JSON object in the answer {generated[:80]!r}"
    for data, source in _json_objects(generated):
        picked = _answer_of(data, source, keys, multi_label=multi_label)
        if isinstance(picked, str):
            problem = picked
        else:
            answer = picked
    if answer is None:
        raise LLMAnswerError(problem)
    return tuple(1.0 if k in answer else 0.0 for k in keys)


def _answer_of(data, source: str, keys: Sequence[str], *, multi_label: bool) -> set[str] | str:
    """The keys one parsed JSON object picks, or why it is no answer."""
    field = "labels" if multi_label else "label"
    if data is None:
        return f"unparseable JSON in the answer {source!r}"
    if not isinstance(data, dict) or field not in data:
        return f"the answer has no {field!r} field: {source[:80]!r}"
    chosen = data[field] if multi_label else [data[field]]
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        return f"{field!r} must be {'a list of letters' if multi_label else 'a letter'}: {source[:80]!r}"
    unknown = [c for c in chosen if c.strip() not in keys]
    if unknown:
        return f"the answer names classes that do not exist: {unknown}"
    return {c.strip() for c in chosen}
