"""Training configuration: frozen, validated dataclasses, one per concern, that round-trip through metadata."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeVar

TARGET_KINDS: tuple[str, ...] = ("attention", "attention_ff", "attention_ff_conv")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine")
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit")
MIXED_PRECISION: tuple[str, ...] = ("no", "fp16", "bf16")

# Bumped when a field changes meaning; from_metadata refuses newer versions rather than misreading them.
CONFIG_VERSION = 1
METADATA_PREFIX = "loralab."


def _invalid(field_name: str, value: object, allowed: str) -> ValueError:
    return ValueError(f"{field_name} = {value!r} is not allowed; expected {allowed}.")


def _check_int(field_name: str, value: object, minimum: int, maximum: int | None = None) -> None:
    # bool is an int subclass; True as a rank is a caller bug, not a rank of 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise _invalid(field_name, value, "an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise _invalid(field_name, value, f"an integer {bound}")


def _check_float(field_name: str, value: object, *, minimum: float, strictly_above: bool = False,
                 below: float | None = None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise _invalid(field_name, value, "a finite number")
    too_low = value <= minimum if strictly_above else value < minimum
    if too_low or (below is not None and value >= below):
        low = f"greater than {minimum}" if strictly_above else f"at least {minimum}"
        high = f" and less than {below}" if below is not None else ""
        raise _invalid(field_name, value, f"a number {low}{high}")


def _check_choice(field_name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise _invalid(field_name, value, "one of " + ", ".join(repr(c) for c in choices))


def _check_bool(field_name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _invalid(field_name, value, "True or False")


@dataclass(frozen=True)
class LoraShape:
    """What is trained: rank, alpha, dropout and which layers get a LoRA."""

    rank: int = field(default=16, metadata={"help": "LoRA rank (network dim): width of the low-rank update. "
                                                    "Higher learns more detail and makes a bigger file."})
    alpha: float = field(default=16.0, metadata={"help": "LoRA alpha: the update is scaled by alpha / rank. "
                                                         "Equal to rank means scale 1."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input during training (0 = off)."})
    targets: str = field(default="attention", metadata={
        "help": "Which layers get a LoRA: attention (q/k/v/out), attention_ff (+ feed-forward and proj_in/out), "
                "attention_ff_conv (+ res-block convolutions, LoCon)."})
    train_text_encoder: bool = field(default=False, metadata={"help": "Also train a LoRA on the text encoder."})
    text_encoder_lr: float | None = field(default=None, metadata={
        "help": "Learning rate for the text encoder LoRA; empty = same as the UNet learning rate."})

    def __post_init__(self) -> None:
        _check_int("rank", self.rank, 1, 1024)
        _check_float("alpha", self.alpha, minimum=0.0, strictly_above=True)
        _check_float("dropout", self.dropout, minimum=0.0, below=1.0)
        _check_choice("targets", self.targets, TARGET_KINDS)
        _check_bool("train_text_encoder", self.train_text_encoder)
        if self.text_encoder_lr is not None:
            _check_float("text_encoder_lr", self.text_encoder_lr, minimum=0.0, strictly_above=True)

    @property
    def scale(self) -> float:
        """The factor applied to up @ down (kohya: alpha / lora_dim)."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class Optimisation:
    """How it is trained: steps, learning rate, batch, schedule, optimizer, loss weighting, precision, seed."""

    steps: int = field(default=1000, metadata={"help": "Number of optimizer updates."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak learning rate of the UNet LoRA."})
    batch_size: int = field(default=1, metadata={"help": "Images per micro-batch."})
    grad_accumulation: int = field(default=1, metadata={
        "help": "Micro-batches summed per update; effective batch = batch_size x grad_accumulation."})
    max_grad_norm: float = field(default=1.0, metadata={
        "help": "Clip the gradient norm to this value (0 = no clipping)."})
    schedule: str = field(default="constant", metadata={
        "help": "Learning-rate schedule after warmup: constant, linear or cosine."})
    warmup_steps: int = field(default=0, metadata={"help": "Steps of linear learning-rate warmup from near 0."})
    optimizer: str = field(default="adamw", metadata={
        "help": "adamw, or adamw8bit (needs bitsandbytes and a CUDA GPU; falls back to adamw otherwise)."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW decoupled weight decay."})
    min_snr_gamma: float | None = field(default=None, metadata={
        "help": "Min-SNR loss weighting gamma (Hang et al. 2023), e.g. 5; empty = off."})
    noise_offset: float = field(default=0.0, metadata={
        "help": "Per-channel noise offset (helps very dark/bright images), e.g. 0.05; 0 = off."})
    mixed_precision: str = field(default="no", metadata={
        "help": "Autocast dtype on CUDA: no (fp32), fp16 (with loss scaling) or bf16. CPU always runs fp32."})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "Recompute activations in backward: much less memory, about 30% slower."})
    seed: int = field(default=0, metadata={
        "help": "Seed of the one random generator (LoRA init, timesteps, noise, data order, dropout)."})

    def __post_init__(self) -> None:
        _check_int("steps", self.steps, 1, 10_000_000)
        _check_float("learning_rate", self.learning_rate, minimum=0.0, strictly_above=True)
        _check_int("batch_size", self.batch_size, 1, 4096)
        _check_int("grad_accumulation", self.grad_accumulation, 1, 4096)
        _check_float("max_grad_norm", self.max_grad_norm, minimum=0.0)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.warmup_steps >= self.steps:
            raise _invalid("warmup_steps", self.warmup_steps, f"fewer warmup steps than steps ({self.steps})")
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_float("weight_decay", self.weight_decay, minimum=0.0)
        if self.min_snr_gamma is not None:
            _check_float("min_snr_gamma", self.min_snr_gamma, minimum=0.0, strictly_above=True)
        _check_float("noise_offset", self.noise_offset, minimum=0.0)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _check_bool("gradient_checkpointing", self.gradient_checkpointing)
        _check_int("seed", self.seed, 0, 2**63 - 1)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.grad_accumulation


@dataclass(frozen=True)
class Checkpointing:
    """When intermediate results are saved; the caller does the saving."""

    every_n_steps: int = field(default=0, metadata={
        "help": "Save a LoRA checkpoint every N steps (0 = only at the end)."})
    keep_last: int = field(default=0, metadata={"help": "Keep only the newest N checkpoints (0 = keep all)."})
    save_resume_state: bool = field(default=True, metadata={
        "help": "With each checkpoint also save optimizer and random state so the run can be resumed exactly."})

    def __post_init__(self) -> None:
        _check_int("every_n_steps", self.every_n_steps, 0)
        _check_int("keep_last", self.keep_last, 0)
        _check_bool("save_resume_state", self.save_resume_state)


_SECTIONS: dict[str, type] = {"lora": LoraShape, "optimisation": Optimisation, "checkpointing": Checkpointing}

_T = TypeVar("_T")


def field_help(cls: type, name: str) -> str:
    """The help text of one config field, e.g. for a node tooltip."""
    for f in dataclasses.fields(cls):
        if f.name == name:
            return str(f.metadata.get("help", ""))
    raise KeyError(f"{cls.__name__} has no field {name!r}")


def _section_from_json(cls: type[_T], values: dict[str, Any]) -> _T:
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """Everything the engine needs to train one LoRA."""

    lora: LoraShape = field(default_factory=LoraShape)
    optimisation: Optimisation = field(default_factory=Optimisation)
    checkpointing: Checkpointing = field(default_factory=Checkpointing)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise _invalid(name, value, f"an instance of {cls.__name__}")

    def to_metadata(self) -> dict[str, str]:
        """Flat `loralab.<section>.<field>` -> JSON value strings, for a safetensors header."""
        out = {f"{METADATA_PREFIX}config_version": str(CONFIG_VERSION)}
        for section in _SECTIONS:
            for key, value in dataclasses.asdict(getattr(self, section)).items():
                out[f"{METADATA_PREFIX}{section}.{key}"] = json.dumps(value)
        return out

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> TrainConfig:
        """Inverse of to_metadata; missing fields take their defaults, unknown keys are ignored."""
        version_key = f"{METADATA_PREFIX}config_version"
        if version_key not in metadata:
            raise ValueError(f"metadata has no {version_key!r}: it was not written by LoRA Lab's trainer.")
        version = int(metadata[version_key])
        if version > CONFIG_VERSION:
            raise ValueError(f"config_version = {version} is newer than this LoRA Lab understands "
                             f"({CONFIG_VERSION}); update LoRA Lab.")
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, raw in metadata.items():
            if not key.startswith(METADATA_PREFIX):
                continue
            section, _, name = key[len(METADATA_PREFIX):].partition(".")
            if section in sections and name:
                try:
                    sections[section][name] = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ValueError(f"metadata {key} = {raw!r} is not valid JSON") from e
        return cls(**{name: _section_from_json(_SECTIONS[name], values) for name, values in sections.items()})
