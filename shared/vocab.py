"""fusionq's vocabulary: every status, mode, source, reason, method and signal name, in one place.

The members are ``str`` subclasses, so they compare equal to (and are stored and sent as) their
plain string values: the database columns, the JSON on the broker and the artifacts keep the
strings they always had. Code names the member; readers find every use by grepping it.
"""

from __future__ import annotations

import enum

try:  # Python 3.11+
    from enum import StrEnum
except ImportError:  # pragma: no cover - Python 3.10
    class StrEnum(str, enum.Enum):
        """A str-valued Enum whose str() is its value (as 3.11's enum.StrEnum)."""

        def __str__(self) -> str:
            return str(self.value)


def values(kind: type[enum.Enum]) -> tuple[str, ...]:
    """The plain string values of a vocabulary, in declaration order (for messages and CLI choices)."""
    return tuple(member.value for member in kind)


class Mode(StrEnum):
    """How a job (or one of its items) is answered."""

    FAST = "fast"  # encoder + fusion network only
    AUTO = "auto"  # escalate low-confidence items up the LLM tiers, within a budget
    FULL = "full"  # every tier's LLM for every item, fetched beside the encoder
    LLM = "llm"  # the first tier's LLM alone


class Source(StrEnum):
    """An LLM worker queue: the tier an LLM serves as (configured by FUSIONQ_LLM_LOCAL / _API)."""

    LOCAL = "local"
    API = "api"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"


class ItemStatus(StrEnum):
    """pending (needs features) -> embedded -> done; scoring: answered by the LLM alone; failed."""

    PENDING = "pending"
    EMBEDDED = "embedded"
    SCORING = "scoring"
    DONE = "done"
    FAILED = "failed"


OPEN_ITEM_STATUSES = (ItemStatus.PENDING, ItemStatus.EMBEDDED, ItemStatus.SCORING)
WAITING_FOR_AGGREGATOR = (ItemStatus.EMBEDDED, ItemStatus.SCORING)


class RequestStatus(StrEnum):
    """An ``llm_requests`` row: queued -> done or failed; skipped when its tier was down."""

    QUEUED = "queued"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class RequestReason(StrEnum):
    """Why an LLM request exists."""

    ESCALATION = "escalation"  # an auto item below its tier's threshold
    FULL = "full"  # a full-mode item
    LLM = "llm"  # an item answered by the LLM alone


class ScoreMethod(StrEnum):
    """How an LLM answer became class scores."""

    LOGPROBS = "logprobs"  # a distribution read off the answer tokens' log-probabilities
    VOTE = "vote"  # a parsed JSON answer: one-hot (or multi-hot) votes
    FAILED = "failed"  # no usable answer: the signal is missing


class FinetuneMethod(StrEnum):
    FULL = "full"  # every weight of the backbone
    LORA = "lora"  # low-rank adapters (peft), merged after training


class Pooling(StrEnum):
    MEAN = "mean"  # over the attention mask
    CLS = "cls"  # the first token
    LAST = "last"  # the last real token (decoder LLMs)


class Precision(StrEnum):
    """Number format of an encoder's weights and activations (pooling is always fp32)."""

    AUTO = "auto"  # resolved when the encoder is chosen: the fastest of these on the device, never slower than fp32
    FP32 = "fp32"
    BF16 = "bf16"  # CPUs with AMX or AVX512-BF16, and CUDA devices that support it
    FP16 = "fp16"  # CUDA only
    INT8 = "int8"  # ONNX Runtime dynamic int8, CPU only, needs the `onnx` extra; never chosen by auto (lossy)


# --- names carried by predictions ---------------------------------------------------------------

ENCODER_SIGNAL = "encoder"  # a prediction's ``signals`` entry: the encoder features were used
BUDGET_EXHAUSTED = "budget_exhausted"  # a prediction's flag: its escalation was refused by the budget


def llm_signal(source: str, method: str) -> str:
    """A prediction's ``signals`` entry for an LLM answer: ``llm:<source>:<method>``."""
    return f"llm:{source}:{method}"


def signal_method(signal: str) -> ScoreMethod | None:
    """The score method of an ``llm:<source>:<method>`` signal, None for any other signal."""
    kind, _, rest = signal.partition(":")
    if kind != "llm" or ":" not in rest:
        return None
    return ScoreMethod(rest.rsplit(":", 1)[1])


def missing_flag(source: str) -> str:
    """The flag of a prediction made without the ``source`` LLM's scores it should have had."""
    return f"missing:llm:{source}"
