"""The one error hierarchy of fusionq. Tasks choose retry or fail by class, never by message text.

* FusionqError                  base of everything fusionq raises on purpose
  + ConfigError                 settings that cannot work together (names the variable)
  + InputError                  bad input from a caller; never retried
  |  + DataFileError            a CSV that cannot be read: encoding, missing column, bad row
  |  + UnknownLabelError        a label the classifier does not know
  + ClassifierNotFound          no classifier of that name (and version) in the registry
  + ArtifactError               a classifier artifact that is missing, corrupt or mismatched
  + EncoderError                an encoder that cannot be loaded or run
  + SchemaError                 the database is not migrated to the code's revision
  + JobNotFound                 no job with that id
  + IdempotencyConflict         an idempotency key reused for a different request
  + JobTimeout                  waiting for a job took longer than asked
  + RegistryConflict            two processes published the same classifier version at once
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
