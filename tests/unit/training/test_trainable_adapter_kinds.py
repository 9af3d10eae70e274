"""Trainable adapter kinds (LoRA/LoCon, LoHa, LoKr, DoRA), rank and module dropout, on tiny layers.

Each kind's delta is compared with its formula written out here (LyCORIS / DoRA paper definitions), the exported
file with what the loading side (trainer/adapters) computes from it, and the dropouts with sd-scripts' and
LyCORIS' definitions replayed from the same global-RNG seed.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.adapters.delta import delta_weight
from trainer.errors import ConfigError, LoraTargetError, ResumeStateError
from trainer.lora.file import parse_lora
from trainer.training.adapter_kinds import TRAINABLE_KINDS
from trainer.training.adapter_kinds.lokr import factorization
from trainer.training.config import ADAPTER_KINDS, LoraShape
from trainer.training.export import export_lora
from trainer.training.resume_checks import check_resumable
from trainer.training.trainable_lora import LoraAdapterSet, adapter_parameter_count

KINDS = ("lora", "loha", "lokr", "dora")
# (kind, layer, use_tucker): every kind on a Linear and a 3x3 conv; LoHa and LoKr also with Tucker cores.
CASES = [(k, layer, False) for k in KINDS for layer in ("linear", "conv")] + [
    ("loha", "conv", True), ("lokr", "conv", True)]
RANK, ALPHA = 2, 3.0


def _layer(kind: str) -> nn.Module:
    torch.manual_seed(0)
    # 12 -> 16: LoKr splits them (3, 4) and (4, 4); rank 2 < 4 / 2 is false, rank 1 decomposes w2
    return nn.Linear(12, 16) if kind == "linear" else nn.Conv2d(12, 16, 3, padding=1)


def _input(layer: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    return torch.randn(3, 12, generator=g) if layer == "linear" else torch.randn(3, 12, 5, 5, generator=g)


def _attached(kind: str, layer: str, tucker: bool, rank: int = RANK, **shape: object):
    model = nn.Sequential(_layer(layer))
    adapters = LoraAdapterSet(rank, ALPHA, init_seed=1, adapter=kind, use_tucker=tucker, **shape)
    adapters.attach(model, ["0"])
    return model, adapters


def _randomise(adapters: LoraAdapterSet, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in adapters.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if name.endswith("dora_scale") else 0.0))


def _factors(adapters: LoraAdapterSet) -> dict[str, torch.Tensor]:
    """Layer "0"'s trained tensors by role."""
    return {name.removeprefix("0."): value for name, value in adapters.state_dict().items()}


def _apply(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(x, weight, layer.bias, layer.stride, layer.padding)
    return F.linear(x, weight, layer.bias)


def _direct_delta(kind: str, f: dict[str, torch.Tensor], weight: torch.Tensor, scale: float) -> torch.Tensor:
    """W' - W by each kind's definition, written out (f: the file's tensors by role)."""
    shape = weight.shape
    if kind in ("lora", "dora"):
        low_rank = (f["lora_up.weight"].flatten(1) @ f["lora_down.weight"].flatten(1)).reshape(shape) * scale
        if kind == "lora":
            return low_rank
        changed = weight + low_rank
        column_norms = torch.linalg.vector_norm(changed, dim=[d for d in range(changed.dim()) if d != 1],
                                                keepdim=True) + torch.finfo(torch.float32).eps
        return f["dora_scale"] * changed / column_norms - weight
    if kind == "loha":
        if "hada_t1" in f:  # Tucker: full[o, i, h, w] = sum t[a, b, h, w] w_a[a, o] w_b[b, i]
            m1 = torch.einsum("abhw,ao,bi->oihw", f["hada_t1"], f["hada_w1_a"], f["hada_w1_b"])
            m2 = torch.einsum("abhw,ao,bi->oihw", f["hada_t2"], f["hada_w2_a"], f["hada_w2_b"])
        else:
            m1 = (f["hada_w1_a"] @ f["hada_w1_b"]).reshape(shape)
            m2 = (f["hada_w2_a"] @ f["hada_w2_b"]).reshape(shape)
        return m1 * m2 * scale
    w1 = f["lokr_w1"]
    if "lokr_w2" in f:
        w2, scale = f["lokr_w2"], 1.0  # both factors full: no rank, scale 1
    elif "lokr_t2" in f:
        w2 = torch.einsum("abhw,ao,bi->oihw", f["lokr_t2"], f["lokr_w2_a"], f["lokr_w2_b"])
    else:
        w2 = (f["lokr_w2_a"] @ f["lokr_w2_b"]).reshape(shape[0] // w1.shape[0], -1, *shape[2:])
    # kron over out and in, the kernel taken from w2: delta[a*b + i, c*d + j, ...] = w1[a, c] * w2[i, j, ...]
    b, d = w2.shape[0], w2.shape[1]
    kron = torch.einsum("ac,ij...->aicj...", w1, w2).reshape(w1.shape[0] * b, w1.shape[1] * d, *w2.shape[2:])
    return kron * scale


def test_every_configured_kind_has_a_trainable_kind() -> None:
    assert set(TRAINABLE_KINDS) == set(ADAPTER_KINDS)


@pytest.mark.parametrize(("dimension", "factor", "expected"), [
    (128, 8, (8, 16)), (128, 2, (2, 64)), (250, 4, (2, 125)), (127, -1, (1, 127))])
def test_factorization_with_a_factor(dimension: int, factor: int, expected: tuple[int, int]) -> None:
    assert factorization(dimension, factor) == expected


@pytest.mark.parametrize("dimension", [1, 12, 16, 127, 128, 250, 320, 360, 512, 640, 1024, 1280])
def test_automatic_factorization_is_the_most_even_split(dimension: int) -> None:
    pairs = [(m, dimension // m) for m in range(1, dimension + 1) if dimension % m == 0 and m <= dimension // m]
    assert factorization(dimension, -1) == min(pairs, key=lambda p: p[1] - p[0])


@pytest.mark.parametrize(("kind", "layer", "tucker"), CASES)
def test_zero_delta_at_step_zero(kind: str, layer: str, tucker: bool) -> None:
    model, adapters = _attached(kind, layer, tucker)
    base = _layer(layer)
    x = _input(layer)
    assert torch.count_nonzero(adapters.merged_delta("0")) == 0
    adapters.train(False)
    assert torch.equal(model(x), base(x))  # exactly the model without adapters


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize(("kind", "layer", "tucker"), CASES)
def test_forward_is_base_plus_the_kinds_delta(kind: str, layer: str, tucker: bool, rank: int) -> None:
    model, adapters = _attached(kind, layer, tucker, rank=rank)
    _randomise(adapters)
    adapters.train(False)
    base = model[0]
    weight = base.weight.detach()
    delta = _direct_delta(kind, _factors(adapters), weight, ALPHA / rank)
    assert torch.count_nonzero(delta) > 0
    torch.testing.assert_close(adapters.merged_delta("0"), delta, rtol=1e-5, atol=1e-6)
    x = _input(layer)
    torch.testing.assert_close(model(x), _apply(base, x, weight + delta), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("kind", "layer", "tucker"), CASES)
def test_exported_file_gives_the_loading_side_the_trained_delta(kind: str, layer: str, tucker: bool) -> None:
    model, adapters = _attached(kind, layer, tucker, rank=1)
    _randomise(adapters)
    tensors = export_lora(adapters, {"0": "lora_unet_block_0"}, dtype=torch.float32)
    loaded = parse_lora(tensors, {}, source_name="trained.safetensors")
    assert not loaded.unrecognised_keys
    module = loaded.modules["lora_unet_block_0"]
    assert module.kind == ("lora" if kind == "dora" else kind) and module.is_dora == (kind == "dora")
    weight = model[0].weight.detach()
    low_rank = delta_weight(module.tensors, weight.shape)
    if kind == "dora":  # the host's weight_decompose on the input axis: m * (W + d) / ||W + d||_column
        changed = weight + low_rank
        norms = changed.transpose(0, 1).reshape(weight.shape[1], -1).norm(dim=1)
        norms = norms.reshape(1, -1, *[1] * (weight.dim() - 2)) + torch.finfo(torch.float32).eps
        loaded_delta = module.tensors["dora_scale"] * changed / norms - weight
    else:
        loaded_delta = low_rank
    torch.testing.assert_close(loaded_delta, adapters.merged_delta("0"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("kind", "layer", "tucker"), CASES)
def test_a_few_steps_lower_the_loss_of_a_tiny_layer(kind: str, layer: str, tucker: bool) -> None:
    model, adapters = _attached(kind, layer, tucker)
    x = _input(layer)
    teacher_model, teacher = _attached(kind, layer, tucker)  # a target the kind can reach
    _randomise(teacher)
    teacher.train(False)
    with torch.no_grad():
        target = teacher_model(x)
    optimizer = torch.optim.Adam(adapters.parameters(), lr=2e-2)
    adapters.train(True)
    losses = []
    for _ in range(50):
        loss = F.mse_loss(model(x), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    assert torch.equal(model[0].weight, _layer(layer).weight)  # the base is never changed


@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_lora_rank_dropout_is_sd_scripts_definition(layer: str) -> None:
    p = 0.5
    model, adapters = _attached("lora", layer, False, rank=4, rank_dropout=p)
    _randomise(adapters)
    adapters.train(True)
    x = _input(layer)
    adapter = adapters["0"]
    torch.manual_seed(11)
    out = model(x)
    torch.manual_seed(11)
    keep = torch.rand((x.shape[0], 4)) > p  # one draw per image and rank channel
    lx = adapter.lora_down(x)
    lx = lx * (keep[:, :, None, None] if layer == "conv" else keep)
    expected = _layer(layer)(x) + adapter.lora_up(lx) * (ALPHA / 4) / (1 - p)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["loha", "lokr", "dora"])
def test_rank_dropout_of_rebuilt_kinds_drops_output_rows_as_lycoris(kind: str) -> None:
    p = 0.5
    model, adapters = _attached(kind, "linear", False, rank=1, rank_dropout=p)
    _randomise(adapters)
    base = model[0]
    weight = base.weight.detach()
    low_rank = _direct_delta(kind if kind != "dora" else "lora", _factors(adapters), weight, ALPHA)
    adapters.train(True)
    x = _input("linear")
    torch.manual_seed(12)
    out = model(x)
    torch.manual_seed(12)
    keep = (torch.rand(16) > p).float()[:, None]  # one draw per output row, not rescaled
    assert 0 < keep.sum() < 16
    dropped = low_rank * keep
    if kind == "dora":
        changed = weight + dropped
        norms = changed.norm(dim=0, keepdim=True) + torch.finfo(torch.float32).eps
        dropped = adapters["0"].dora_scale * changed / norms - weight
    torch.testing.assert_close(out, F.linear(x, weight + dropped, base.bias), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_module_dropout_skips_the_whole_adapter_as_sd_scripts(kind: str) -> None:
    p = 0.5
    model, adapters = _attached(kind, "linear", False, module_dropout=p)
    _randomise(adapters)
    base = _layer("linear")
    x = _input("linear")
    adapters.train(True)
    torch.manual_seed(13)
    outputs = [model(x) for _ in range(12)]
    torch.manual_seed(13)
    skipped = [bool(torch.rand(1) < p) for _ in range(12)]  # sd-scripts: torch.rand(1) < module_dropout
    assert 0 < sum(skipped) < 12
    adapters.train(False)
    with_adapter = model(x)
    for out, skip in zip(outputs, skipped, strict=True):
        assert torch.equal(out, base(x)) if skip else torch.allclose(out, with_adapter, atol=1e-6)
    # in eval mode nothing is dropped and no global randomness is drawn
    state = torch.get_rng_state()
    assert torch.allclose(model(x), with_adapter) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(("kind", "layer", "tucker"), CASES)
def test_parameter_count_matches_the_built_adapters(kind: str, layer: str, tucker: bool) -> None:
    model, adapters = _attached(kind, layer, tucker)
    assert adapter_parameter_count(model, ["0"], adapters.shape) == sum(p.numel() for p in adapters.parameters())


def test_loha_has_twice_the_parameters_of_lora() -> None:
    counts = {kind: adapter_parameter_count(nn.Sequential(_layer("linear")), ["0"],
                                            LoraShape(rank=RANK, alpha=ALPHA, adapter=kind)) for kind in KINDS}
    assert counts["loha"] == 2 * counts["lora"] == 2 * RANK * (12 + 16)
    assert counts["dora"] == counts["lora"] + 12  # one magnitude per input column
    assert counts["lokr"] == 3 * 4 + 4 * 4  # w1 [3, 4] and a full w2 [4, 4] (rank 2 is not below 4 / 2)


def test_lokr_records_alpha_as_lycoris_when_both_factors_are_full() -> None:
    _, full = _attached("lokr", "linear", False, rank=2)
    _, decomposed = _attached("lokr", "linear", False, rank=1)
    assert set(full.file_tensors("0")) == {"lokr_w1", "lokr_w2", "alpha"}
    assert float(full.file_tensors("0")["alpha"]) == 2.0 and full["0"].scale == 1.0
    assert set(decomposed.file_tensors("0")) == {"lokr_w1", "lokr_w2_a", "lokr_w2_b", "alpha"}
    assert decomposed["0"].scale == ALPHA


def test_lokr_tucker_is_written_with_w2_rebuilt_in_full() -> None:
    """The host's LoKr loader fails on a lokr_t2 core; the file holds w2 = scale * Tucker rebuild, alpha = rank."""
    _, adapters = _attached("lokr", "conv", True, rank=1)
    _randomise(adapters)
    assert {"lokr_t2", "lokr_w2_a", "lokr_w2_b"} <= set(_factors(adapters))  # trained as Tucker
    written = adapters.file_tensors("0")
    assert set(written) == {"lokr_w1", "lokr_w2", "alpha"} and float(written["alpha"]) == 1.0
    assert written["lokr_w2"].shape == (4, 4, 3, 3)


def test_dora_magnitude_starts_at_the_base_weights_column_norms() -> None:
    model, adapters = _attached("dora", "conv", False)
    weight = model[0].weight.detach()
    norms = torch.linalg.vector_norm(weight, dim=(0, 2, 3), keepdim=True) + torch.finfo(torch.float32).eps
    assert adapters["0"].dora_scale.shape == (1, 12, 1, 1)
    torch.testing.assert_close(adapters["0"].dora_scale.detach(), norms)


@pytest.mark.parametrize(("kind", "layer", "tucker"), [c for c in CASES if c[0] != "lora"])
def test_rebuilt_kinds_keep_no_full_size_weight_for_backward(kind: str, layer: str, tucker: bool) -> None:
    """One layer's rebuilt weight at a time: what autograd keeps from forward to backward is smaller than a weight,
    and the gradients equal those of the same delta kept (no recompute)."""
    model, adapters = _attached(kind, layer, tucker, rank=1)
    _randomise(adapters)
    adapters.train(True)
    x = _input(layer)
    weight_size = model[0].weight.numel()
    kept: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = model(x)
    assert kept and max(kept) < weight_size
    out.square().sum().backward()
    grads = {name: p.grad.clone() for name, p in adapters.named_parameters()}
    for p in adapters.parameters():
        p.grad = None
    weight = model[0].weight.detach()
    expected = _apply(model[0], x, weight + adapters["0"].training_delta(lambda: weight))
    expected.square().sum().backward()
    for name, p in adapters.named_parameters():  # fp32 in two summation orders (DoRA's norm: ~1e-4 apart on AMD)
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-5 * float(p.grad.abs().max()))


def test_dora_refuses_a_layer_whose_weight_is_no_float_tensor() -> None:
    layer = nn.Linear(12, 16)
    layer.weight = nn.Parameter(torch.zeros(16, 12, dtype=torch.int8), requires_grad=False)
    with pytest.raises(LoraTargetError, match=r"layer '0' stores its weight as a Parameter of torch.int8; adapter "
                                              r"dora reads the base weight and needs a plain float tensor"):
        LoraAdapterSet(2, 2.0, adapter="dora").attach(nn.Sequential(layer), ["0"])


def test_resume_state_round_trip_per_kind() -> None:
    for kind, layer, tucker in CASES:
        _, adapters = _attached(kind, layer, tucker)
        _randomise(adapters)
        _, other = _attached(kind, layer, tucker)
        other.load_state_dict(adapters.state_dict())
        assert all(torch.equal(v, other.state_dict()[k]) for k, v in adapters.state_dict().items())
        assert other["0"].scale == adapters["0"].scale


def test_config_refuses_unknown_kinds_and_factor_zero() -> None:
    with pytest.raises(ConfigError, match=r"adapter = 'oft' is not allowed; expected one of 'lora', 'loha'"):
        LoraShape(adapter="oft")
    with pytest.raises(ConfigError, match=r"lokr_factor = 0 is not allowed; expected -1 \(automatic\) or a factor"):
        LoraShape(lokr_factor=0)


def test_a_resume_with_another_adapter_kind_is_refused() -> None:
    from tests.support.tiny_models import config
    saved = config(lora=LoraShape(rank=2, alpha=2.0, adapter="loha"))
    for changed in (LoraShape(rank=2, alpha=2.0, adapter="lokr"),
                    LoraShape(rank=2, alpha=2.0, adapter="loha", use_tucker=True),
                    LoraShape(rank=2, alpha=2.0, adapter="loha", lokr_factor=4)):
        with pytest.raises(ResumeStateError, match="different LoRA shape"):
            check_resumable(saved, config(lora=changed), 1)
