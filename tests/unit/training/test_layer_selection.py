"""Layer selection: the targets presets widened by include_layers and narrowed by exclude_layers, and every refusal."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from tests.support.tiny_models import TinyTextEncoder, make_model
from trainer.errors import ConfigError, LoraTargetError, ResumeStateError
from trainer.training.config import LoraShape, TrainConfig
from trainer.training.layer_selection import layer_patterns, select_layers, select_targets
from trainer.training.resume_checks import check_resumable

BLOCK = "attn.transformer_blocks.0"
ATTENTION = [f"{BLOCK}.attn{i}.{p}" for i in (1, 2) for p in ("to_q", "to_k", "to_v", "to_out.0")]
RES_BLOCK = ["res.in_layers.2", "res.emb_layers.1", "res.out_layers.3"]


def _in_model_order(model: nn.Module, names: list[str]) -> list[str]:
    return [name for name, _ in model.named_modules() if name in names]


def _select(model: nn.Module, **shape: str) -> list[str]:
    return select_layers({"unet": model}, LoraShape(**shape))["unet"]


class _OpaqueMatmul(nn.Module):
    """A layer with a weight matrix but neither Linear-like nor a convolution (as a host's own quantized type)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(4, 4))


def test_without_patterns_the_presets_select_as_before() -> None:
    model = make_model()
    for kind in ("attention", "attention_ff", "attention_ff_conv"):
        assert _select(model, targets=kind) == select_targets(model, kind)


def test_include_adds_linear_and_conv_layers_in_model_order() -> None:
    model = make_model()
    selected = _select(model, targets="attention", include_layers=r"^res\., time_embed")
    assert selected == _in_model_order(model, [*ATTENTION, *RES_BLOCK, "time_embed"])
    assert selected.index("time_embed") < selected.index("res.in_layers.2") < selected.index(ATTENTION[0])


def test_exclude_removes_from_the_preset_and_from_the_included() -> None:
    model = make_model()
    selected = _select(model, targets="attention_ff_conv", exclude_layers=r"attn1, ff\.net, proj_(in|out), ^res")
    assert selected == [name for name in ATTENTION if ".attn2." in name]
    # A plain word excludes every layer whose name contains it, what was included too.
    assert _select(model, targets="attention", include_layers="res", exclude_layers="emb_layers, to_out") == \
        _in_model_order(model, ["res.in_layers.2", "res.out_layers.3", *(n for n in ATTENTION if "to_out" not in n)])


def test_a_comma_inside_a_repeat_belongs_to_the_pattern() -> None:
    patterns = layer_patterns("include_layers", r" to_[qk]{1,2}$ ,, attn2 ")
    assert [p.pattern for p in patterns] == [r"to_[qk]{1,2}$", "attn2"]
    assert layer_patterns("exclude_layers", "  ") == ()


def test_an_invalid_regular_expression_is_refused_naming_the_field_and_pattern() -> None:
    with pytest.raises(ConfigError, match=r"include_layers = 'attn2, to_\(q' is not allowed: 'to_\(q' is not a valid"):
        LoraShape(include_layers="attn2, to_(q")
    with pytest.raises(ConfigError, match=r"exclude_layers = '\[a-' is not allowed: '\[a-' is not a valid"):
        LoraShape(exclude_layers="[a-")


def test_an_include_pattern_that_matches_no_trainable_layer_is_refused() -> None:
    model = make_model()
    refusal = re.escape(r"'in_layers\.0' matches no Linear or Conv2d layer of the unet")
    with pytest.raises(ConfigError, match=refusal) as info:
        _select(model, include_layers=r"attn2, in_layers\.0")  # a GroupNorm
    assert "'conv_in'" in str(info.value)  # names the user can copy from
    grouped = nn.Module()
    grouped.depthwise = nn.Conv2d(4, 4, 3, groups=4)
    grouped.attn = nn.Module()
    grouped.attn.to_q = nn.Linear(4, 4)
    with pytest.raises(ConfigError, match="'depthwise' matches no Linear or Conv2d layer"):
        _select(grouped, include_layers="depthwise")


def test_an_exclude_pattern_that_leaves_nothing_out_is_refused() -> None:
    model = make_model()
    refusal = re.escape(r"'ff\.net' leaves out none of the 8 layers that targets 'attention' select")
    with pytest.raises(ConfigError, match=refusal):
        _select(model, targets="attention", exclude_layers=r"attn1, ff\.net")
    with pytest.raises(ConfigError, match="leaves out all 8 layers that targets 'attention' selects"):
        _select(model, targets="attention", exclude_layers="attn")


def test_a_pattern_needs_to_match_in_only_one_of_the_models() -> None:
    unet, text_encoder = make_model(), TinyTextEncoder()
    shape = LoraShape(targets="attention", include_layers=r"mlp\.fc1", exclude_layers="attn1")
    selected = select_layers({"unet": unet, "text_encoder": text_encoder}, shape)
    assert selected == {"unet": [n for n in ATTENTION if ".attn2." in n],
                        "text_encoder": ["layer.self_attn.q_proj", "layer.mlp.fc1"]}
    with pytest.raises(ConfigError, match=re.escape(r"'mlp\.fc1' matches no Linear or Conv2d layer of the unet;")):
        select_layers({"unet": unet}, shape)
    with pytest.raises(ConfigError, match="of the unet or text_encoder"):
        select_layers({"unet": unet, "text_encoder": text_encoder}, LoraShape(include_layers="nowhere"))


def test_an_unsupported_layer_type_is_refused_where_selected_and_can_be_excluded() -> None:
    model = make_model()
    model.extra = _OpaqueMatmul()
    with pytest.raises(LoraTargetError, match="layer 'extra' is a .*_OpaqueMatmul"):
        _select(model, include_layers="extra, attn2")
    model.attn.transformer_blocks[0].attn1.to_q = _OpaqueMatmul()  # in the attention preset's position
    with pytest.raises(LoraTargetError, match=f"layer '{BLOCK}.attn1.to_q' is a .*exclude_layers"):
        _select(model)
    assert _select(model, exclude_layers=r"attn1\.to_q") == [n for n in ATTENTION if not n.endswith("attn1.to_q")]


def test_a_resume_with_other_patterns_is_refused_naming_them() -> None:
    saved = TrainConfig(lora=LoraShape(include_layers="res"))
    current = TrainConfig(lora=LoraShape(include_layers="res", exclude_layers="attn1"))
    with pytest.raises(ResumeStateError, match="exclude_layers: saved '', now 'attn1'"):
        check_resumable(saved, current, saved_step=1)
    check_resumable(saved, TrainConfig(lora=LoraShape(include_layers="res")), saved_step=1)


def test_patterns_round_trip_through_the_metadata() -> None:
    config = TrainConfig(lora=LoraShape(include_layers=r"^res\., to_[qk]{1,2}", exclude_layers="attn1"))
    assert TrainConfig.from_metadata(config.to_metadata()) == config
