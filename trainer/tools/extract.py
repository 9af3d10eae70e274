"""Extract a LoRA: the difference of two models (fine-tuned - base), layer by layer, as a low-rank kohya LoRA/LoCon.

Each layer's delta D = W_tuned - W_base [out, in(,kh,kw)] is cut to a rank (fixed or dynamic, `rank.RankRule`)
by SVD (`svd.matrix_spectrum`). As in sd-scripts `extract_lora_from_models.py`, the factors may then be clamped:
with up = U_k diag(S_k) and down = Vh_k, every entry of both is clamped to [-h, h], where h is the
`clamp_quantile` quantile of all their entries together (signed values, linear interpolation, as
`torch.quantile`); 1.0 leaves them as they are. The clamped product is then stored with sqrt(S) in each half
(the same product; better in fp16). A layer whose largest |D| entry is at most `min_diff` is left out (sd-scripts
applies its `min_diff` to the text encoder as a whole; here it applies to every layer alike).

The weights come in as an iterable of (kohya prefix, base weight, tuned weight): the caller forms one layer's
weights at a time, and only one layer's delta exists at any moment. Biases and 1-D weights are not extracted.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch

from ..errors import LoraShapeError, LoraToolError, LoraValueError
from .layer import SPECTRUM_VALUES, LayerReport, _is_conv, _lora_tensors
from .merge import SAVE_DTYPES, LayerCallback, ToolResult, _cast, check_output_settings
from .metadata import layer_metadata, mean_kept_share
from .rank import RankRule
from .svd import compute_device, matrix_spectrum

logger = logging.getLogger(__name__)

WeightPair = tuple[str, torch.Tensor, torch.Tensor]  # (kohya prefix, base weight, tuned weight)
NO_CLAMP = 1.0


@dataclass(frozen=True)
class ExtractPlan:
    """How every layer is extracted: rank rule, quantile clamp (1.0: none), unchanged threshold, alpha, device."""

    rule: RankRule
    clamp_quantile: float = 0.99
    min_diff: float = 0.0
    alpha: float | None = None  # None: alpha = rank (scale 1)
    device: torch.device = torch.device("cpu")
    svd_method: str = "auto"

    def __post_init__(self) -> None:
        if not 0.0 < self.clamp_quantile <= 1.0:
            raise LoraToolError(f"clamp_quantile must be in (0, 1] (sd-scripts uses 0.99; 1 clamps nothing), "
                                f"got {self.clamp_quantile}.")
        if not self.min_diff >= 0.0:
            raise LoraToolError(f"min_diff must be 0 or more (0 leaves out only layers that are exactly equal), "
                                f"got {self.min_diff}.")
        check_output_settings(self.svd_method, None, self.alpha)


@dataclass(frozen=True)
class ExtractResult(ToolResult):
    """A ToolResult that also names the layers left out as unchanged."""

    unchanged: tuple[str, ...] = ()

    def summary(self) -> str:
        return f"{super().summary()}\n{len(self.unchanged)} unchanged layers left out"


def quantile(values: torch.Tensor, q: float) -> float:
    """The q-quantile of all entries, linear interpolation between order statistics (what `torch.quantile`
    computes), by a sort: torch.quantile refuses inputs of more than 2^24 entries, which large layers have."""
    flat = values.flatten().sort().values
    position = q * (flat.numel() - 1)
    low = int(position)
    high = min(low + 1, flat.numel() - 1)
    below, above = float(flat[low]), float(flat[high])
    return below + (position - low) * (above - below)


def clamped_factors(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor,
                    clamp_quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """sd-scripts' clamp of the rank-k factors U_k S_k [out, k] and Vh_k [k, in], returned as (up, down) with the
    same product and sqrt(S) in each half (a zero singular value keeps the split as it is)."""
    up, down = u * s, vh
    if clamp_quantile < NO_CLAMP:
        high = quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-high, high), down.clamp(-high, high)
    root = torch.where(s > 0, s.sqrt(), torch.ones_like(s))
    return (up / root).float().cpu().contiguous(), (down * root[:, None]).float().cpu().contiguous()


def extract_layer(prefix: str, base: torch.Tensor, tuned: torch.Tensor,
                  plan: ExtractPlan) -> tuple[dict[str, torch.Tensor], LayerReport] | None:
    """The LoRA tensors of one layer and what was kept, or None when the layer is unchanged (max |D| <= min_diff).

    base, tuned: [out, in] or [out, in, kh, kw], any float dtype and device; computed in fp32 on plan.device.
    """
    if tuple(base.shape) != tuple(tuned.shape):
        raise LoraShapeError(f"Layer {prefix}: the base model's weight has shape {list(base.shape)}, the tuned "
                             f"model's {list(tuned.shape)}; the two models are of different architectures.",
                             key=prefix)
    if base.dim() not in (2, 4):
        raise LoraShapeError(f"Layer {prefix}: a weight of shape {list(base.shape)} has no LoRA form (only "
                             "Linear [out, in] and Conv2d [out, in, kh, kw] weights do).", key=prefix)
    shape = tuple(int(n) for n in base.shape)
    delta = tuned.to(plan.device, torch.float32) - base.to(plan.device, torch.float32)
    if not bool(torch.isfinite(delta).all()):
        raise LoraValueError(f"Layer {prefix}: a model's weight holds NaN/Inf; that model is damaged.", key=prefix)
    if float(delta.abs().max()) <= plan.min_diff:
        return None
    matrix = delta.reshape(shape[0], -1)
    conv = _is_conv(shape)
    spectrum = matrix_spectrum(matrix, plan.rule.cap(conv), plan.device, plan.svd_method)
    rank = min(plan.rule.choose(spectrum.S, spectrum.length, conv), int(spectrum.S.shape[0]))
    if plan.clamp_quantile < NO_CLAMP:
        up, down = clamped_factors(spectrum.U[:, :rank], spectrum.S[:rank], spectrum.Vh[:rank], plan.clamp_quantile)
        approx = up.to(plan.device) @ down.to(plan.device)
        error = float(torch.linalg.matrix_norm(matrix - approx))
        kept_share = min(1.0, float(torch.linalg.matrix_norm(approx)) / spectrum.norm) if spectrum.norm else 1.0
    else:
        up, down = spectrum.factors(rank)
        error, kept_share = spectrum.error(rank), spectrum.kept_share(rank)
    values = tuple(float(v) for v in spectrum.S[:SPECTRUM_VALUES].cpu())
    report = LayerReport(prefix, None, rank, kept_share, error, spectrum.norm, values, conv=conv)
    return _lora_tensors(prefix, up, down, shape, plan.alpha), report


def extract_lora(pairs: Iterable[WeightPair], rule: RankRule, *, total: int | None = None,
                 clamp_quantile: float = 0.99, min_diff: float = 0.0, output_name: str = "extracted",
                 alpha: float | None = None, save_dtype: str = "fp16", device: str | torch.device | None = None,
                 svd_method: str = "auto", sources: Mapping[str, object] | None = None,
                 base_metadata: Mapping[str, str] | None = None,
                 on_layer: LayerCallback | None = None) -> ExtractResult:
    """The LoRA that takes the base model to the tuned one; see the module docstring.

    `total` is how many pairs come (for `on_layer(done, total, prefix)`, called after every layer, written or
    not; raise in it to stop). `sources` describes the two models for the metadata (`loralab.tool.sources`);
    `base_metadata` adds fields such as ss_base_model_version and modelspec.architecture.
    """
    if save_dtype not in SAVE_DTYPES:
        raise LoraToolError(f"precision {save_dtype!r} is unknown; use one of {', '.join(SAVE_DTYPES)}.")
    plan = ExtractPlan(rule, clamp_quantile, min_diff, alpha, compute_device(device), svd_method)
    tensors: dict[str, torch.Tensor] = {}
    reports: list[LayerReport] = []
    unchanged: list[str] = []
    seen = 0
    with torch.no_grad():
        for seen, (prefix, base, tuned) in enumerate(pairs, start=1):
            extracted = extract_layer(prefix, base, tuned, plan)
            if extracted is None:
                unchanged.append(prefix)
            else:
                tensors.update(_cast(extracted[0], SAVE_DTYPES[save_dtype]))
                reports.append(extracted[1])
            if on_layer is not None:
                on_layer(seen, total or seen, prefix)
    if not reports:
        raise LoraToolError(f"The two models are the same in all {seen} layers compared (no change above min_diff "
                            f"{min_diff:g}); nothing to extract. Connect the fine-tuned model (or the one with "
                            "LoRAs applied) as tuned_model, or lower min_diff.")
    clamp_text = "off" if clamp_quantile >= NO_CLAMP else f"{clamp_quantile:g}"
    comment = f"extracted by LoRA Lab ({rule.label}, clamp_quantile {clamp_text}, min_diff {min_diff:g})"
    metadata = layer_metadata("extract", output_name, reports, rule.label, alpha, comment)
    metadata.update(dict(base_metadata or {}))
    metadata["loralab.tool.sources"] = json.dumps(dict(sources or {}))
    metadata["loralab.tool.clamp_quantile"] = clamp_text
    metadata["loralab.tool.min_diff"] = f"{min_diff:g}"
    metadata["loralab.tool.unchanged_layers"] = str(len(unchanged))
    logger.info("extracted %d layers (%d unchanged) with %s, mean kept share %.4f", len(reports), len(unchanged),
                rule.label, mean_kept_share(reports))
    return ExtractResult(tensors, metadata, tuple(reports), tuple(unchanged))
