"""The fetcher's failures: each one a single clear line and a distinct exit code.

Messages never contain credentials, signed URLs or request headers: they name the source,
the file and what went wrong, so they are safe for logs, events and termination messages.
"""

from __future__ import annotations


class FetchError(Exception):
    """A fetch or resolution that cannot succeed; ``str(error)`` is the one line to show."""

    exit_code = 1
    reason = "FetchFailed"


class SelectionError(FetchError):
    """No file, or more than one candidate, for the requested format and quantization."""

    exit_code = 4
    reason = "FileSelectionFailed"


class MissingFileError(FetchError):
    """The source, revision or a file does not exist."""

    exit_code = 4
    reason = "FileMissing"


class DigestMismatchError(FetchError):
    """Bytes whose sha256 differs from the pinned or published digest."""

    exit_code = 3
    reason = "DigestMismatch"


class CredentialError(FetchError):
    """The source refused the credentials (or their absence)."""

    exit_code = 5
    reason = "CredentialDenied"


class SourceChangedError(FetchError):
    """The source no longer serves the revision that was resolved or pinned."""

    exit_code = 6
    reason = "SourceChanged"


class TransientError(FetchError):
    """A network or server failure that outlasted every retry."""

    exit_code = 7
    reason = "TransferFailed"


class LockLostError(FetchError):
    """Another fetcher judged this one's cache lock stale and took it over."""

    exit_code = 8
    reason = "CacheLockLost"


class SignatureInvalidError(FetchError):
    """A model signature that does not verify: another key, changed bytes, unsigned files."""

    exit_code = 9
    reason = "SignatureInvalid"


class InvalidArtifactError(FetchError, ValueError):
    """Metadata read from a source (a GGUF or safetensors header, ``config.json``, a
    listing or manifest) that is malformed or outside the readers' bounds.

    Waiting does not cure it: the source must serve other bytes. ``file`` names what was
    read, ``problem`` says what is wrong; a ``ValueError`` too, for the local readers'
    callers (``modeldeploy plan --gguf``, the BOM).
    """

    exit_code = 10
    reason = "InvalidArtifact"

    def __init__(self, file: str, problem: str, where: str = "") -> None:
        super().__init__(f"{where}: {file}: {problem}" if where else f"{file}: {problem}")
        self.file = file
        self.problem = problem
        self.where = where

    def __reduce__(self) -> tuple[type[InvalidArtifactError], tuple[str, str, str]]:
        return type(self), (self.file, self.problem, self.where)

    def within(self, where: str) -> InvalidArtifactError:
        """The same error, its message prefixed with the source (and revision) it came from."""
        return InvalidArtifactError(self.file, self.problem, where=where)
