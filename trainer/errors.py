"""The engine's exception types: one base class, one subclass per kind of failure a user can fix."""

from __future__ import annotations


class LoraLabError(Exception):
    """Base class of every error the engine raises on purpose (message written for the user)."""


class LoraFileError(LoraLabError):
    """A LoRA file cannot be read, or what it holds is not a usable LoRA.

    `path` is the file (or source name) concerned; `key` the tensor key, when one is to blame.
    """

    def __init__(self, message: str, path: str | None = None, key: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.key = key


class NotALoraError(LoraFileError):
    """The file is readable but is something else: a full checkpoint, or holds no LoRA keys."""


class LoraValueError(LoraFileError):
    """A tensor holds unusable values: NaN/Inf, or an alpha that is not a finite scalar."""


class LoraShapeError(LoraFileError):
    """Tensor shapes do not fit together (rank mismatch) or do not fit the model's weight."""


class LoraWriteError(LoraLabError):
    """A file could not be written; the previous file at that path, if any, is left unchanged."""

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
