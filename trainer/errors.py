"""Every exception the engine raises on purpose: one base class, one subclass per kind of failure a user can fix.

All of them derive from `LoraLabError`, so a boundary (a node, an HTTP route) that catches `LoraLabError`
catches everything we raise on purpose, and nothing else. Messages are written for the user: the file or
field, the value, what is expected and what to do. `tests/unit/test_errors.py` checks that no module of
`trainer/` defines an exception class anywhere but here.
"""

from __future__ import annotations


class LoraLabError(Exception):
    """Base class of every error the engine raises on purpose (message written for the user)."""


# --- Configuration (trainer/training/config.py) -------------------------------------------------------

class ConfigError(LoraLabError, ValueError):
    """A training setting has a value that is not allowed (the message names the field and what is allowed).

    Also a ValueError, so code written against the former plain ValueError keeps working.
    """


# --- LoRA files: reading and writing (trainer/safetensors_io.py, trainer/lora/*) --------------------------

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


# --- LoRA stacks (trainer/lora/stack.py) ------------------------------------------------------------------

class StackRowsError(LoraLabError):
    """The rows of a LoRA stack are not in the documented format."""


# --- Datasets (trainer/data/*) ----------------------------------------------------------------------------

class DatasetError(LoraLabError, ValueError):
    """The dataset folder, one of its files, or a dataset setting cannot be used (message says how to fix it)."""


# --- Training (trainer/training/*) ------------------------------------------------------------------------

class LoraTargetError(LoraLabError, ValueError):
    """A layer cannot carry a LoRA of the requested shape, or a named layer does not exist."""


class NonFiniteLossError(LoraLabError, FloatingPointError):
    """The loss (or gradient) became NaN/Inf at `step`; that update was not applied."""

    def __init__(self, step: int, value: float, what: str = "loss") -> None:
        super().__init__(
            f"Training stopped at step {step}: the {what} became {value} (not a finite number). That update "
            "was not applied, so the LoRA and the last checkpoint are intact. Lower the learning rate, or use "
            "mixed precision bf16 or no instead of fp16.")
        self.step = step
        self.value = value


class LoraExportError(LoraLabError, ValueError):
    """The LoRA cannot be exported as asked (a layer without a kohya name, duplicate names)."""


class OptimizerError(LoraLabError, ValueError):
    """The chosen optimizer cannot be built here: its package or module is missing, it needs a GPU, the class is
    not an optimizer, or it refuses the given arguments (the message names the setting and the fix)."""


# --- Resume state (trainer/training/resume_state.py) ------------------------------------------------------

class ResumeStateError(LoraLabError, ValueError):
    """A resume-state file cannot continue this run: damaged, not a state file, or saved with other settings.

    `path` is the resume-state file, when known.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ResumeStateWriteError(LoraWriteError):
    """The resume state could not be written; the previous state file at that path, if any, is unchanged."""


# --- Sample grids (trainer/sample_grid.py) ---------------------------------------------------------------

class SampleGridError(LoraLabError, ValueError):
    """Preview Samples' prompts or strengths cannot make a grid (too many, none, not numbers)."""


# --- Training jobs (trainer/jobs.py) ----------------------------------------------------------------------

class JobError(LoraLabError, ValueError):
    """A job was asked for something it cannot do: a bad sample name, an unknown action, a finished job."""


# --- The host adapter (nodes/*) ------------------------------------------------------------------------

class UnsupportedModelError(LoraLabError, ValueError):
    """The connected model's family cannot be trained by this version of LoRA Lab."""


class RunNameError(LoraLabError, ValueError):
    """The output name cannot be used as a file name in the loras folder."""


class LoraMismatchError(LoraShapeError):
    """The LoRA's layers do not belong to the connected MODEL/CLIP (another base model)."""


class LoraNameError(LoraFileError):
    """A LoRA name that is not a file inside the host's loras folders."""


class TrainingStopped(LoraLabError):
    """The run could not start or did not finish; the message says what was kept."""


class RunHalted(LoraLabError):
    """Raised out of any phase once the run must end early (Cancel or Stop); the run catches it, keeps the last
    whole step and ends the job. `reason` is CANCELLED or STOPPED."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"training was {reason}")
        self.reason = reason


class PeerProcessError(LoraLabError):
    """Data-parallel training (torchrun): another process failed, left, timed out or was interrupted during a step.
    Every process drops that step and keeps the last whole one; `reason` is what the run records as its stop."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- LoRA tools (trainer/tools/*) -------------------------------------------------------------------------

class LoraToolError(LoraLabError, ValueError):
    """A merge or resize cannot be done as asked (a layer kind concat cannot join, a bad rank or rule, DoRA)."""


# --- Block weights (trainer/lora/block_weights.py) --------------------------------------------------------

class BlockWeightsError(LoraLabError, ValueError):
    """Per-block strengths that cannot be read: a wrong count of values, an unknown preset or block, not a number,
    or a layout that does not fit the LoRA's model family."""


# --- Stack presets (trainer/lora/stack_presets.py) --------------------------------------------------------

class StackPresetError(LoraLabError, ValueError):
    """A stack preset cannot be saved as asked: a name that is not allowed, rows that are not valid, too many."""


class StackPresetFileError(LoraLabError):
    """The stack presets file exists but cannot be read (not JSON, not the documented layout); it is left as it is.

    `path` is the presets file.
    """

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
