"""Every error streamsvd raises on purpose.

Each class also inherits the built-in exception a caller would catch without
knowing streamsvd (``ValueError``, ``FileNotFoundError``, ...). Messages give
the rule, the value found and the fix; where there is a file and a row, both.
"""

from __future__ import annotations


class StreamSVDError(Exception):
    """Base class of every error raised on purpose by streamsvd."""

    exit_code = 1


class InvalidInputError(StreamSVDError, ValueError):
    """Input data breaks a rule: NaN/Inf, non-numeric, ragged, empty, wrong shape."""

    exit_code = 3


class ShapeMismatchError(InvalidInputError):
    """Input has another column count than the store (or than the rest of a file)."""


class UnsupportedFormatError(InvalidInputError):
    """The format of a source is unknown or cannot be read as a numeric matrix."""


class SourceNotFoundError(StreamSVDError, FileNotFoundError):
    """A source path does not exist or a glob matches nothing."""

    exit_code = 4


class StoreNotFoundError(StreamSVDError, FileNotFoundError):
    """No store at the given location."""

    exit_code = 4


class NotAStoreError(StreamSVDError, ValueError):
    """The location holds something that is not a streamsvd store."""

    exit_code = 4


class StoreExistsError(StreamSVDError, FileExistsError):
    """A store was to be created where something already exists."""

    exit_code = 4


class StoreLockedError(StreamSVDError, BlockingIOError):
    """Another process is writing to the store (one writer per store)."""

    exit_code = 5


class ConflictError(StreamSVDError, RuntimeError):
    """The store changed under a writer (another writer committed first)."""

    exit_code = 5


class NoFactorsError(StreamSVDError, LookupError):
    """The store has no factors yet: run ``streamsvd fit`` first."""

    exit_code = 6


class ConfigError(StreamSVDError, ValueError):
    """A configuration file, option or environment variable is invalid."""

    exit_code = 2


class VerificationError(StreamSVDError, ArithmeticError):
    """Measured quantities disagree with the recorded ones beyond tolerance."""

    exit_code = 7
