"""Label sets, answer keys and the versioned prompt templates every LLM backend uses.

Single-label: the instructions and the class list come first, the text last, so the prefix is
shared (and cached) across texts. Each class gets a one-letter answer key (A, B, ...): keys are
distinct single tokens in practice, so labels whose names share first tokens are still told apart.
Multi-label: one yes/no question per class, with the text before the question.
The text sits between <<< and >>>; what it says cannot change the answer format we read.
"""

from __future__ import annotations

import hashlib
import json
import string
from dataclasses import dataclass, field

from shared.errors import InputError

PROMPT_VERSION = "fq-prompt-1"
KEYS = tuple(string.ascii_uppercase + string.ascii_lowercase)  # 52 single-letter answer keys
TEXT_OPEN, TEXT_CLOSE = "<<<", ">>>"


@dataclass(frozen=True)
class LabelSet:
    """Class names with optional descriptions and few-shot examples ``(text, label)``."""

    names: tuple[str, ...]
    descriptions: tuple[str, ...] = ()
    examples: tuple[tuple[str, str], ...] = field(default=())

    def __post_init__(self) -> None:
        names = tuple(str(n).strip() for n in self.names)
        object.__setattr__(self, "names", names)
        if len(names) < 1 or any(not n for n in names) or len(set(names)) != len(names):
            raise ValueError(f"a label set needs distinct, non-empty names; got {list(self.names)}")
        if self.descriptions and len(self.descriptions) != len(names):
            raise ValueError("give one description per label, or none")
        unknown = [label for _, label in self.examples if label not in names]
        if unknown:
            raise ValueError(f"few-shot examples use labels outside the set: {unknown}")

    @property
    def keys(self) -> tuple[str, ...]:
        """One answer key per class; more than 52 classes need the vote format."""
        return KEYS[: len(self.names)] if len(self.names) <= len(KEYS) else tuple(str(i + 1) for i in range(len(self.names)))

    def describe(self, i: int) -> str:
        return f"{self.names[i]} - {self.descriptions[i]}" if self.descriptions and self.descriptions[i] else self.names[i]

    @property
    def digest(self) -> str:
        """Stable hash of everything that changes the question (names, descriptions, examples)."""
        blob = json.dumps([self.names, self.descriptions, self.examples], ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()


def frame_text(text: str) -> str:
    return f"Text:\n{TEXT_OPEN}\n{text}\n{TEXT_CLOSE}"


def single_label_messages(labels: LabelSet, text: str, *, vote: bool = False) -> list[dict]:
    """Chat messages asking for the one best class of ``text`` (a letter, or JSON when ``vote``)."""
    classes = "\n".join(f"{key}. {labels.describe(i)}" for i, key in enumerate(labels.keys))
    reply = ('Reply with JSON only: {"label": "<letter>"}.' if vote
             else "Reply with the letter of the one best class, nothing else.")
    system = f"You classify texts. {reply}\nClasses:\n{classes}"
    for example_text, example_label in labels.examples:
        system += f"\n\nExample:\n{frame_text(example_text)}\nAnswer: {labels.keys[labels.names.index(example_label)]}"
    user = f"{frame_text(text)}\n" + ("Answer with JSON." if vote else "Answer with one letter.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def multi_label_question_messages(labels: LabelSet, text: str, class_index: int) -> list[dict]:
    """Chat messages asking whether ``text`` belongs to one class (yes/no)."""
    system = "You answer whether a text belongs to a class. Reply yes or no, nothing else."
    user = (f"{frame_text(text)}\nClass: {labels.describe(class_index)}\n"
            "Does the text belong to this class? Answer yes or no.")
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def multi_label_vote_messages(labels: LabelSet, text: str) -> list[dict]:
    """Chat messages asking for every class that applies, as JSON (providers without logprobs)."""
    classes = "\n".join(f"{key}. {labels.describe(i)}" for i, key in enumerate(labels.keys))
    system = ('You classify texts into every class that applies. Reply with JSON only: {"labels": ["<letter>", ...]}.'
              f"\nClasses:\n{classes}")
    return [{"role": "system", "content": system}, {"role": "user", "content": f"{frame_text(text)}\nAnswer with JSON."}]


def cache_key(*, backend: str, model: str, labels: LabelSet, multi_label: bool, text_hash: str) -> str:
    """The identity of one LLM question: nobody pays twice for it."""
    parts = [backend, model, PROMPT_VERSION, labels.digest, "multi" if multi_label else "single", text_hash]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def parse_labels(text: str) -> LabelSet:
    """``sports,business`` or ``sports=games and athletes,business=money and firms``."""
    names, descriptions = [], []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, description = part.partition("=")
        names.append(name.strip())
        descriptions.append(description.strip())
    if len(names) < 1:
        raise InputError("--labels needs at least one class name, e.g. --labels sports,business")
    try:
        return LabelSet(tuple(names), tuple(descriptions) if any(descriptions) else ())
    except ValueError as exc:
        raise InputError(f"--labels {text!r}: {exc}") from exc
