"""Training configuration: frozen, validated dataclasses, one per concern, that round-trip through metadata."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ..errors import ConfigError
from .data_options import DataOptions
from .layer_selection import layer_patterns
from .losses import HUBER_SCHEDULES, LOSS_TYPES
from .optimizer_args import is_dotted_name, parse_optimizer_args
from .settings import check_fields, invalid, setting
from .workers import WorkerRequest, parse_workers

TARGET_KINDS: tuple[str, ...] = ("attention", "attention_ff", "attention_ff_conv")
# trainer/training/adapter_kinds/ trains each (one file per kind).
ADAPTER_KINDS: tuple[str, ...] = ("lora", "loha", "lokr", "dora")
SCHEDULES: tuple[str, ...] = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "inverse_sqrt",
                              "warmup_stable_decay", "rex")
# trainer/training/optimizers.py builds each; "custom" is any torch.optim-style class named by optimizer_class.
OPTIMIZERS: tuple[str, ...] = ("adamw", "adamw8bit", "lion", "adafactor", "prodigy", "adamw_schedulefree",
                               "sgd_nesterov", "custom")
# Optimizers that train at one point and are used at another (train()/eval()): no schedule on top of theirs.
SCHEDULE_FREE_OPTIMIZERS = frozenset({"adamw_schedulefree"})
# warmup_stable_decay with decay_steps = 0 decays over this share of the steps after warmup.
DEFAULT_DECAY_SHARE = 0.2
MIXED_PRECISION: tuple[str, ...] = ("no", "fp16", "bf16")
# memory_check.py applies them before a run: auto may turn gradient checkpointing on, as_set never changes a setting.
MEMORY_MODES: tuple[str, ...] = ("auto", "as_set")
# objective.sample_timesteps draws each; all but uniform are for flow-matching models (SD3, Flux).
TIMESTEP_SAMPLINGS: tuple[str, ...] = ("uniform", "sigmoid", "logit_normal", "shift", "flux_shift")

# Bumped when a field changes meaning; from_metadata refuses newer versions rather than misreading them.
# 2: min_snr_gamma and text_encoder_lr say "off" / "same as the UNet" with 0 instead of null.
CONFIG_VERSION = 2
METADATA_PREFIX = "loralab."
_NULL_MEANT_ZERO_BEFORE_V2 = {("optimisation", "min_snr_gamma"), ("lora", "text_encoder_lr")}


@dataclass(frozen=True)
class LoraShape:
    """What is trained: rank, alpha, dropout and which layers get a LoRA."""

    rank: int = setting(16, "LoRA rank (network dim): width of the low-rank update. "
                            "Higher learns more detail and makes a bigger file.", min=1, max=1024)
    alpha: float = setting(16.0, "LoRA alpha: the update is scaled by alpha / rank. Equal to rank means scale 1.",
                           min=0.01, max=1024.0, step=0.5)
    # Up to 0.9: a dropout near 1 leaves nothing to learn from.
    dropout: float = setting(0.0, "Dropout on the LoRA input during training (0 = off).",
                             min=0.0, max=0.9, step=0.01)
    targets: str = setting("attention", "Which layers get a LoRA: attention (q/k/v/out), attention_ff "
                                        "(+ feed-forward and proj_in/out), attention_ff_conv (+ res-block "
                                        "convolutions, LoCon).", choices=TARGET_KINDS)
    train_text_encoder: bool = setting(False, "Also train a LoRA on the text encoder.")
    text_encoder_lr: float = setting(0.0, "Learning rate for the text encoder LoRA; 0 = the same as the UNet "
                                          "learning rate.", min=0.0, max=1.0, step=1e-5, round=1e-7)
    include_layers: str = setting("", "Also train these layers (Linear or Conv2d) besides the targets preset: "
                                      "comma-separated regular expressions searched in the layer names as the "
                                      "host names them, e.g. output_blocks\\.[3-5]\\..*proj_in (SD1/SDXL UNet) or "
                                      "clip_l\\..*mlp (text encoder). Empty = none.")
    exclude_layers: str = setting("", "Leave out these layers from what targets and include_layers select: "
                                      "comma-separated regular expressions searched in the layer names, e.g. "
                                      "attn1, input_blocks\\.[1-2]\\. (a plain word excludes every layer whose "
                                      "name contains it). Empty = none.")

    adapter: str = setting("lora", "What each layer trains: lora (LoCon on convolutions); loha (LyCORIS LoHa: the "
                                   "elementwise product of two rank-r pairs, twice LoRA's parameters); lokr (LyCORIS "
                                   "LoKr: a Kronecker product of a small full factor and a rank-r factor, see "
                                   "lokr_factor); dora (LoRA whose weight W + delta is rescaled to a trained "
                                   "magnitude per input column, as DoRA; reads the base weights).",
                           choices=ADAPTER_KINDS)
    lokr_factor: int = setting(-1, "lokr: how each layer's sizes are split between the two Kronecker factors: -1 = "
                                   "automatic (the most even split, as LyCORIS), or the size of the small factor, "
                                   "e.g. 8 or 16.", min=-1, max=1024)
    use_tucker: bool = setting(False, "loha, lokr: factor the kernel of convolutions larger than 1x1 with a Tucker "
                                      "core (LyCORIS use_tucker): fewer parameters at the same rank.")
    rank_dropout: float = setting(0.0, "Training only, 0 = off. lora: each rank channel is dropped per image with "
                                       "this probability and the rest scaled by 1 / (1 - p) (sd-scripts "
                                       "rank_dropout); loha, lokr, dora: each output row of the layer's update is "
                                       "dropped per pass (LyCORIS).", min=0.0, max=0.9, step=0.01)
    module_dropout: float = setting(0.0, "Training only: a layer's whole adapter is skipped for a pass with this "
                                         "probability (sd-scripts module_dropout); 0 = off.",
                                    min=0.0, max=0.9, step=0.01)

    def __post_init__(self) -> None:
        check_fields(self)
        layer_patterns("include_layers", self.include_layers)  # raises ConfigError naming an invalid pattern
        layer_patterns("exclude_layers", self.exclude_layers)
        if self.lokr_factor == 0:
            raise invalid("lokr_factor", self.lokr_factor, "-1 (automatic) or a factor of at least 1")

    @property
    def scale(self) -> float:
        """The factor applied to up @ down (kohya: alpha / lora_dim)."""
        return self.alpha / self.rank


@dataclass(frozen=True)
class Optimisation:
    """How it is trained: steps, learning rate, batch, schedule, optimizer, loss weighting, precision, seed."""

    steps: int = setting(500, "Number of optimizer updates.", min=1, max=1_000_000)
    learning_rate: float = setting(1e-4, "Peak learning rate of the UNet LoRA.",
                                   min=0.0, max=1.0, step=1e-5, round=1e-7, exclusive_min=True)
    batch_size: int = setting(1, "Images per micro-batch.", min=1, max=256)
    grad_accumulation: int = setting(1, "Micro-batches summed per update; effective batch = batch_size x "
                                        "grad_accumulation.", min=1, max=1024)
    max_grad_norm: float = setting(1.0, "Clip the gradient norm to this value (0 = no clipping).",
                                   min=0.0, max=1000.0, step=0.1)
    schedule: str = setting("constant", "Learning-rate schedule after warmup: constant; linear, cosine or "
                                        "polynomial (lr_power) decay; cosine_with_restarts (lr_cycles); "
                                        "inverse_sqrt (x sqrt(warmup / step)); warmup_stable_decay (constant, "
                                        "then a cosine decay over decay_steps); rex. Decays end at min_lr_ratio.",
                            choices=SCHEDULES)
    warmup_steps: int = setting(0, "Steps of linear learning-rate warmup from near 0.", min=0, max=100_000)
    optimizer: str = setting("adamw", "adamw; adamw8bit (bitsandbytes, CUDA GPU only); lion (lion-pytorch; use "
                                      "a 3-10x lower lr than AdamW); adafactor (torch's; lr is its upper bound); "
                                      "prodigy (prodigyopt; estimates the lr itself: learning_rate is a "
                                      "multiplier, set 1.0); adamw_schedulefree (schedulefree; needs schedule "
                                      "constant); sgd_nesterov (momentum 0.9); custom (optimizer_class). "
                                      "pip install \"comfyui-lora-lab[optimizers]\" brings the packages.",
                             choices=OPTIMIZERS)
    optimizer_class: str = setting("", "With optimizer custom: the optimizer class by dotted name, e.g. "
                                       "torch.optim.RAdam or bitsandbytes.optim.Lion8bit (a torch.optim.Optimizer "
                                       "subclass; the module must be installed).")
    optimizer_args: str = setting("", "Extra keyword arguments of the optimizer, as sd-scripts' --optimizer_args: "
                                      "comma-separated key=value with Python literals, e.g. betas=(0.9, 0.99), "
                                      "eps=1e-8 or d_coef=2, use_bias_correction=True. They override the "
                                      "defaults, weight_decay included.")
    optimizer_fallback: bool = setting(False, "If the optimizer needs a package or a CUDA GPU that is missing, "
                                              "train with AdamW instead of stopping (not for prodigy or custom, "
                                              "whose learning rates mean something else).")
    weight_decay: float = setting(0.01, "Decoupled weight decay of the optimizer (0 = off).",
                                  min=0.0, max=1.0, step=0.001)
    lr_cycles: int = setting(1, "cosine_with_restarts: number of cosine cycles, each restarting at the peak "
                                "learning rate.", min=1, max=1000)
    lr_power: float = setting(1.0, "polynomial: power of the decay (1 = linear, 2 = quadratic).",
                              min=0.1, max=10.0, step=0.1)
    decay_steps: int = setting(0, "warmup_stable_decay: steps of the final decay (0 = the last 20% of the steps "
                                  "after warmup).", min=0, max=1_000_000)
    min_lr_ratio: float = setting(0.0, "Where the decaying schedules end, as a share of the peak learning rate "
                                       "(0 = decay to near 0).", min=0.0, max=1.0, step=0.01)
    min_snr_gamma: float = setting(0.0, "Min-SNR loss weighting gamma (Hang et al. 2023), e.g. 5; 0 = off.",
                                   min=0.0, max=100.0, step=0.5)
    noise_offset: float = setting(0.0, "Per-channel noise offset (helps very dark/bright images), e.g. 0.05; "
                                       "0 = off.", min=0.0, max=1.0, step=0.01)
    timestep_sampling: str = setting("uniform", "How training timesteps are drawn in [min_timestep, max_timestep): "
                                                "uniform; for flow models (SD3, Flux) also sigmoid "
                                                "(sigmoid(sigmoid_scale x N(0,1))), logit_normal (sigmoid of "
                                                "N(logit_mean, logit_std)), shift (sigmoid, then shifted towards "
                                                "noise by discrete_flow_shift) and flux_shift (sigmoid, shifted by "
                                                "Flux's resolution-dependent mu), as sd-scripts defines them.",
                                     choices=TIMESTEP_SAMPLINGS)
    min_timestep: int = setting(0, "Lowest training timestep drawn (0 = the least noise).", min=0, max=999)
    max_timestep: int = setting(1000, "Training timesteps are drawn below this (1000 = up to the most noise; "
                                      "capped at the model's number of timesteps).", min=1, max=1000)
    sigmoid_scale: float = setting(1.0, "sigmoid, shift, flux_shift: scale of the normal draw before the "
                                        "sigmoid (larger = closer to the ends).", min=0.0, max=100.0, step=0.1,
                                   exclusive_min=True)
    logit_mean: float = setting(0.0, "logit_normal: mean of the normal draw (SD3 paper: 0).",
                                min=-10.0, max=10.0, step=0.1)
    logit_std: float = setting(1.0, "logit_normal: standard deviation of the normal draw (SD3 paper: 1).",
                               min=0.0, max=10.0, step=0.1, exclusive_min=True)
    discrete_flow_shift: float = setting(3.0, "shift: t -> t x shift / (1 + (shift - 1) x t); above 1 draws "
                                              "noisier timesteps (sd-scripts' default 3.0).",
                                         min=0.0, max=100.0, step=0.1, exclusive_min=True)
    # bf16: what ComfyUI users run on a GPU (the host's own training node defaults to it); the CPU runs fp32.
    mixed_precision: str = setting("bf16", "Autocast dtype on CUDA: no (fp32), fp16 (with loss scaling) or "
                                           "bf16. CPU always runs fp32.", choices=MIXED_PRECISION)
    gradient_checkpointing: bool = setting(False, "Recompute activations in backward: much less memory, "
                                                  "about 30% slower.")
    seed: int = setting(0, "Seed of the one random generator (LoRA init, timesteps, noise, data order, dropout).",
                        min=0, max=2**31 - 1)
    loss_type: str = setting("l2", "Distance between prediction and target: l2 (mean squared error); l1; huber and "
                                   "smooth_l1 (pseudo-Huber: quadratic below a threshold, linear above; less pulled "
                                   "by outliers), with the threshold from huber_schedule and huber_c (sd-scripts).",
                             choices=LOSS_TYPES)
    huber_schedule: str = setting("snr", "huber, smooth_l1: the threshold per timestep: constant (huber_c); "
                                         "exponential (from 1 at no noise down to huber_c at pure noise); snr (from "
                                         "1 down to huber_c with the noise-to-signal ratio; epsilon and v models).",
                                  choices=HUBER_SCHEDULES)
    huber_c: float = setting(0.1, "huber, smooth_l1: the threshold (constant) or the threshold at pure noise "
                                  "(exponential, snr); sd-scripts' default 0.1.",
                             min=0.0, max=1.0, step=0.01, round=1e-4, exclusive_min=True)
    debiased_estimation: bool = setting(False, "Weight each sample's loss by 1 / sqrt(SNR) (v models: 1 / (SNR + 1)) "
                                               "with the SNR clamped to [0.001, 1000] (debiased estimation, Yu et "
                                               "al. 2024, sd-scripts); combines with min_snr_gamma. Epsilon and v "
                                               "models.")
    noise_offset_random_strength: bool = setting(False, "Scale the noise offset by a random U(0, 1) per image, so "
                                                        "offsets between 0 and noise_offset are trained.")
    multires_noise_iterations: int = setting(0, "Multires (pyramid) noise: add this many levels of coarser, "
                                                "upsampled noise (sd-scripts recommends 6-10); 0 = off.",
                                             min=0, max=64)
    multires_noise_discount: float = setting(0.3, "Multires noise: each coarser level is weighted by this power "
                                                  "of its level (sd-scripts' default 0.3).",
                                             min=0.0, max=1.0, step=0.01)
    ip_noise_gamma: float = setting(0.0, "Input perturbation (Ning et al. 2023): the noisy input gets this much "
                                         "extra noise that the target does not contain, e.g. 0.1; 0 = off.",
                                    min=0.0, max=1.0, step=0.01)
    ip_noise_gamma_random_strength: bool = setting(False, "Scale ip_noise_gamma by a random U(0, 1) per image.")
    zero_terminal_snr: bool = setting(False, "Rescale the noise schedule so the last timestep is pure noise (zero "
                                             "terminal SNR, Lin et al. 2023); for epsilon and v models (best with "
                                             "v prediction), not flow models.")
    loraplus_lr_ratio: float = setting(0.0, "LoRA+ (Hayou et al. 2024): the up matrices (lora_up) of the LoRA train "
                                            "at this many times the learning rate of the down matrices, in the UNet "
                                            "and the text encoder alike (sd-scripts' loraplus_lr_ratio); the paper "
                                            "suggests 16, sd-scripts' docs start near 4. lora and dora adapters "
                                            "only. 0 = off.", min=0.0, max=1000.0, step=0.5)
    memory_mode: str = setting("auto", "auto: when the run does not fit in the memory available as set, gradient "
                                       "checkpointing is turned on if that makes it fit, else (on a GPU) the "
                                       "smallest share of the frozen weights that makes it fit is offloaded to CPU "
                                       "memory (slower steps, the same result), and the log and the dashboard say "
                                       "so; as_set: the settings as they are, and a run that does not fit is "
                                       "refused. Either way a run that cannot fit is refused before any work, with "
                                       "the options that would.", choices=MEMORY_MODES)
    offload_fraction: float = setting(0.0, "Share of the frozen model weights kept in CPU memory and streamed to the "
                                           "device layer by layer as they are used, through the host's own partial "
                                           "loading (its lowvram mode); implies gradient checkpointing. 0 = the "
                                           "whole model on the device. memory_mode auto may raise it, never lower "
                                           "it.", min=0.0, max=1.0, step=0.05)
    device_memory_limit_gb: float = setting(0.0, "The most device memory this run plans to use, in GiB (less than "
                                                 "the host reports free leaves room for other programs, e.g. on a "
                                                 "shared GPU); memory_mode auto fits the run into it. 0 = what the "
                                                 "host reports free.", min=0.0, max=4096.0, step=0.5)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.warmup_steps >= self.steps:
            raise invalid("warmup_steps", self.warmup_steps, f"fewer warmup steps than steps ({self.steps})")
        after_warmup = self.steps - self.warmup_steps
        if self.schedule == "warmup_stable_decay" and self.decay_steps > after_warmup:
            raise invalid("decay_steps", self.decay_steps, f"at most the {after_warmup} steps after warmup "
                                                            f"(steps {self.steps} - warmup_steps {self.warmup_steps})")
        if self.optimizer in SCHEDULE_FREE_OPTIMIZERS and self.schedule != "constant":
            raise invalid("schedule", self.schedule, f"'constant' with optimizer {self.optimizer!r}: a schedule-free "
                                                      "optimizer replaces the schedule (warmup_steps still applies)")
        if self.optimizer == "custom" and not is_dotted_name(self.optimizer_class):
            raise invalid("optimizer_class", self.optimizer_class, "with optimizer 'custom', the optimizer class "
                                                                    "by dotted name, e.g. 'torch.optim.RAdam'")
        parse_optimizer_args(self.optimizer_args)  # raises ConfigError naming the bad argument
        if self.min_timestep >= self.max_timestep:
            raise invalid("min_timestep", self.min_timestep, f"less than max_timestep ({self.max_timestep})")

    def optimizer_kwargs(self) -> dict[str, Any]:
        """optimizer_args as keyword arguments (validated when the config was made)."""
        return parse_optimizer_args(self.optimizer_args)


@dataclass(frozen=True)
class Checkpointing:
    """When intermediate results are saved and how many are kept; the caller does the saving."""

    every_n_steps: int = setting(0, "Save a LoRA checkpoint every N steps (0 = only at the end).",
                                 min=0, max=1_000_000)
    keep_last: int = setting(0, "Keep only the newest N step checkpoints of this run, deleting older ones "
                                "(0 = keep all). The final LoRA is always kept.", min=0, max=10_000)
    save_resume_state: bool = setting(True, "With each checkpoint also save optimizer and random state so the "
                                            "run can be resumed exactly.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Ema:
    """An exponential moving average of the LoRA weights, kept beside the trained ones (fp32, on the CPU)."""

    enabled: bool = setting(False, "Keep an EMA of the LoRA weights and save it beside each LoRA file as "
                                   "<name>-ema.safetensors.")
    decay: float = setting(0.99, "EMA decay per update: ema = decay x ema + (1 - decay) x weights. It averages "
                                 "over about 1 / (1 - decay) updates (0.99: the last ~100); it starts at the "
                                 "untrained LoRA, so keep that well below steps / ema_every.",
                           min=0.0, max=0.99999, step=0.001, round=1e-5)
    every_n_steps: int = setting(1, "Update the EMA every N steps.", min=1, max=10_000)
    for_samples: bool = setting(False, "Render the samples during training with the EMA weights.")
    for_final: bool = setting(False, "The node outputs (lora_name, patched MODEL) use <name>-ema.safetensors "
                                     "instead of <name>.safetensors; both files are written either way.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Sampling:
    """Sample images during a run, rendered as a KSampler would; they do not change what is trained."""

    every_n_steps: int = setting(0, "Render samples every N steps, plus a step-0 baseline (0 = only on request).",
                                 min=0, max=1_000_000)
    prompts: str = setting("", "One prompt per line; empty = the first dataset captions (with the trigger word).",
                           multiline=True)
    steps: int = setting(20, "Sampler steps of each sample, as on a KSampler.", min=1, max=200)
    cfg: float = setting(7.0, "Classifier-free guidance scale of each sample, as on a KSampler.",
                         min=0.0, max=100.0, step=0.1)
    # The host's sampler and scheduler names; the engine cannot list them, the node fills in the choices.
    sampler: str = setting("euler", "Sampler of each sample, as on a KSampler.")
    scheduler: str = setting("normal", "Scheduler of each sample, as on a KSampler.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class RunStart:
    """Whether a run starts fresh or continues the one saved under the same name."""

    resume: bool = setting(False, "Continue the run saved under the same name from its last checkpoint.")

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Evaluation:
    """The loss at fixed noise before and after training; it measures the run and changes nothing it trains."""

    images: str = setting("4", "Training images whose loss at fixed noise (the same noise and timesteps each time) "
                               "is measured before and after training, in one batched pass each; off skips both "
                               "(a short run saves their time).", choices=("off", "1", "2", "4", "8"))

    def __post_init__(self) -> None:
        check_fields(self)

    @property
    def image_count(self) -> int:
        """How many images each measurement takes; 0 = none."""
        return 0 if self.images == "off" else int(self.images)


@dataclass(frozen=True)
class Workers:
    """Where the run trains: in the host's process, or in torchrun worker processes beside it (workers.py)."""

    workers: str = setting("", "Train in torchrun worker processes beside the host, which keeps its own GPU for "
                               "the graph: empty = in this process; 2 = two processes (the GPUs after the host's "
                               "own; on a CPU-only host, two processes on the CPU); cuda:1,cuda:2 = on these GPUs. "
                               "The batch is per process; the dashboard follows the run.")

    def __post_init__(self) -> None:
        check_fields(self)
        parse_workers(self.workers)  # refuses a malformed text by name

    @property
    def request(self) -> WorkerRequest | None:
        """The worker processes asked for; None: train in this process."""
        return parse_workers(self.workers)


_SECTIONS: dict[str, type] = {"lora": LoraShape, "optimisation": Optimisation, "checkpointing": Checkpointing,
                              "ema": Ema, "data": DataOptions}

_T = TypeVar("_T")


def _section_from_json(cls: type[_T], values: dict[str, Any]) -> _T:
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in values.items() if k in known})


@dataclass(frozen=True)
class TrainConfig:
    """Everything the engine needs to train one LoRA."""

    lora: LoraShape = field(default_factory=LoraShape)
    optimisation: Optimisation = field(default_factory=Optimisation)
    checkpointing: Checkpointing = field(default_factory=Checkpointing)
    ema: Ema = field(default_factory=Ema)
    data: DataOptions = field(default_factory=DataOptions)

    def __post_init__(self) -> None:
        for name, cls in _SECTIONS.items():
            value = getattr(self, name)
            if not isinstance(value, cls):
                raise invalid(name, value, f"an instance of {cls.__name__}")

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
            raise ConfigError(f"metadata has no {version_key!r}: it was not written by LoRA Lab's trainer.")
        version = int(metadata[version_key])
        if version > CONFIG_VERSION:
            raise ConfigError(f"config_version = {version} is newer than this LoRA Lab understands "
                             f"({CONFIG_VERSION}); update LoRA Lab.")
        sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
        for key, raw in metadata.items():
            if not key.startswith(METADATA_PREFIX):
                continue
            section, _, name = key[len(METADATA_PREFIX):].partition(".")
            if section in sections and name:
                try:
                    value = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"metadata {key} = {raw!r} is not valid JSON") from e
                if value is None and version < 2 and (section, name) in _NULL_MEANT_ZERO_BEFORE_V2:
                    value = 0.0  # files and resume states written before version 2 keep loading
                sections[section][name] = value
        return cls(**{name: _section_from_json(_SECTIONS[name], values) for name, values in sections.items()})
