"""The one error hierarchy of fusionq. Tasks choose retry or fail by class, never by message text.

* FusionqError                  base of everything fusionq raises on purpose
  + ConfigError                 settings that cannot work together (names the variable)
  + InputError                  bad input from a caller; never retried
  |  + DataFileError            a CSV that cannot be read: encoding, missing column, bad row
  |  + UnknownLabelError        a label the classifier does not know
  |  + IdempotencyConflict      an idempotency key reused for a different request
  + ClassifierNotFound          no classifier of that name (and version) in the registry
  + ArtifactError               a classifier artifact that is missing, corrupt or mismatched
  + EncoderError                an encoder that cannot be loaded or run
  + SchemaError                 the database is not migrated to the code's revision
  + JobNotFound                 no job with that id
  + JobTimeout                  waiting for a job took longer than asked
  + RegistryConflict            two processes published the same classifier version at once
  + ServiceUnavailable          a database or broker that cannot be reached (says which, and what to do)
  |  + DatabaseUnavailable      the database refused the connection or does not exist
  |  + BrokerUnavailable        nobody answers at the broker URL
  + ScorerError                 an LLM scorer could not produce scores
     + LLMLoadError             an in-process LLM that cannot be loaded
     + LLMAnswerError           the LLM answered, but not in a form we can read (never a default class)
     + ProviderError            the provider failed: HTTP error, timeout, refused connection
     |  + RateLimited           429 after every retry (carries Retry-After when given)
     |  + ProviderTimeout       no answer within the timeout
     |  + LogprobsUnsupported   the provider rejects the logprobs parameter (fall back to votes)
     + RateLimitWait            the shared rate limit left no call slot within the wait allowed
     + CircuitOpen              the provider failed repeatedly; calls are paused for a while

The CLI prints any FusionqError's message and exits with status 2.
"""


class FusionqError(Exception):
    """Base of every error fusionq raises on purpose."""


class ConfigError(FusionqError, ValueError):
    """Raised when settings cannot work together; the message names the variable to change."""


class InputError(FusionqError, ValueError):
    """Raised when a caller's input is unusable; retrying cannot help."""


class DataFileError(InputError):
    """Raised when a data file cannot be read: wrong encoding, missing column, malformed row."""


class UnknownLabelError(InputError):
    """Raised when data holds labels that the classifier was not trained on."""


class ClassifierNotFound(FusionqError, LookupError):
    """Raised when the registry has no classifier of the requested name and version."""


class ArtifactError(FusionqError):
    """Raised when a classifier artifact is missing, corrupt or does not match its registry row."""


class EncoderError(FusionqError):
    """Raised when an encoder cannot be loaded or fails on a batch."""


class SchemaError(FusionqError):
    """Raised when the database schema is not at the revision this code needs."""


class JobNotFound(FusionqError, LookupError):
    """Raised when no job has the given id."""


class IdempotencyConflict(InputError):
    """Raised when an idempotency key is reused with a different classifier or texts."""


class JobTimeout(FusionqError, TimeoutError):
    """Raised when a job does not finish within the time a caller waits."""


class RegistryConflict(FusionqError):
    """Raised when two processes publish the same classifier name and version at once."""


class ServiceUnavailable(FusionqError):
    """Raised when a service fusionq needs cannot be reached; the message names it and what to do."""


class DatabaseUnavailable(ServiceUnavailable):
    """Raised when the database refuses the connection, is not running, or does not exist."""


class BrokerUnavailable(ServiceUnavailable):
    """Raised when the Celery broker cannot be reached, before or while a job is enqueued."""


class ScorerError(FusionqError):
    """Raised when an LLM scorer cannot produce scores for a request."""


class LLMLoadError(ScorerError):
    """Raised when an in-process LLM (the ``hf`` backend) cannot be loaded."""


class LLMAnswerError(ScorerError):
    """Raised when an LLM answer cannot be read as class scores; the text gets no LLM signal."""


class ProviderError(ScorerError):
    """Raised when an LLM provider fails: HTTP error status, refused connection, bad response."""


class RateLimited(ProviderError):
    """Raised when a provider still answers 429 after every retry."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ProviderTimeout(ProviderError):
    """Raised when a provider does not answer within the configured timeout."""


class LogprobsUnsupported(ProviderError):
    """Raised when a provider rejects the logprobs parameter; callers fall back to JSON votes."""


class RateLimitWait(ScorerError):
    """Raised when the shared rate limit leaves no call slot within the time a caller may wait."""


class CircuitOpen(ScorerError):
    """Raised instead of calling a provider whose circuit breaker is open."""
