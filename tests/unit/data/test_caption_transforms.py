"""Caption transforms (sd-scripts' semantics): kept tokens, shuffle, tag and caption dropout, prefix/suffix, trigger."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.data.captions import CaptionTransform, split_tags
from trainer.errors import ConfigError
from trainer.training.config import DataOptions

CAPTION = "sks, red hair, smiling, outdoors, blue sky, tree"


def _transform(trigger: str = "sks", affixes: bool = True, **options: object) -> CaptionTransform:
    return CaptionTransform(DataOptions(**options), trigger, affixes)  # type: ignore[arg-type]


def test_all_off_returns_the_caption_and_draws_nothing() -> None:
    generator = torch.Generator().manual_seed(5)
    before = generator.get_state()
    transform = _transform()
    assert transform.is_identity and not transform.varies
    assert transform.apply(CAPTION, generator) == CAPTION
    assert torch.equal(generator.get_state(), before)


def test_prefix_and_suffix_join_with_a_space_and_skip_class_images() -> None:
    transform = _transform(caption_prefix="masterpiece,", caption_suffix=", photo")
    assert not transform.varies
    assert transform.apply("sks, cat", None) == "masterpiece, sks, cat , photo"
    assert _transform(trigger="", affixes=False, caption_prefix="masterpiece,").apply("dog", None) == "dog"


def test_shuffle_keeps_the_first_tokens_and_permutes_the_rest_with_the_generator() -> None:
    transform = _transform(trigger="", shuffle_caption=True, keep_tokens=2)
    tags = split_tags(CAPTION)
    for seed in range(5):
        expected_order = torch.randperm(4, generator=torch.Generator().manual_seed(seed)).tolist()
        got = transform.apply(CAPTION, torch.Generator().manual_seed(seed))
        assert got == ", ".join(tags[:2] + [tags[2 + i] for i in expected_order])


def test_every_order_of_the_free_tags_appears() -> None:
    transform = _transform(trigger="", shuffle_caption=True, keep_tokens=1)
    generator = torch.Generator().manual_seed(0)
    seen = {transform.apply("a, b, c, d", generator) for _ in range(400)}
    assert all(caption.startswith("a, ") for caption in seen) and len(seen) == math.factorial(3)


def test_separator_keeps_the_head_and_the_tail() -> None:
    transform = _transform(trigger="", keep_tokens_separator="|||", caption_tag_dropout_rate=1.0)
    assert transform.apply("a, b ||| c, d ||| e", torch.Generator()) == "a, b, e"
    still = _transform(trigger="", keep_tokens_separator="|||")  # no random transform: the separator is removed
    assert still.apply("a, b ||| c, d", None) == "a, b, c, d"


def test_the_trigger_word_is_never_dropped() -> None:
    everything = dict(shuffle_caption=True, caption_tag_dropout_rate=1.0)
    generator = torch.Generator().manual_seed(1)
    assert _transform(**everything).apply("red hair, sks, smiling", generator) == "sks"
    assert _transform(keep_tokens=1, **everything).apply("red hair, photo of sks, smiling", generator) == \
        "red hair, photo of sks"
    assert _transform(caption_dropout_rate=1.0).apply(CAPTION, generator) == "sks"
    assert _transform(trigger="", caption_dropout_rate=1.0).apply(CAPTION, generator) == ""


def test_caption_dropout_rate_is_the_share_of_dropped_captions() -> None:
    rate, draws = 0.3, 20_000
    transform = _transform(caption_dropout_rate=rate)
    generator = torch.Generator().manual_seed(2)
    dropped = sum(transform.apply(CAPTION, generator) == "sks" for _ in range(draws))
    sigma = math.sqrt(draws * rate * (1 - rate))
    assert abs(dropped - draws * rate) < 4 * sigma


def test_tag_dropout_rate_is_the_share_of_dropped_free_tags() -> None:
    rate, draws = 0.25, 4_000
    transform = _transform(keep_tokens=1, caption_tag_dropout_rate=rate)
    generator = torch.Generator().manual_seed(3)
    free = len(split_tags(CAPTION)) - 1
    kept = 0
    for _ in range(draws):
        tags = split_tags(transform.apply(CAPTION, generator))
        assert tags[0] == "sks"
        kept += len(tags) - 1
    trials = draws * free
    sigma = math.sqrt(trials * rate * (1 - rate))
    assert abs((trials - kept) - trials * rate) < 4 * sigma


def test_same_generator_state_same_captions() -> None:
    transform = _transform(shuffle_caption=True, caption_dropout_rate=0.2, caption_tag_dropout_rate=0.3)
    runs = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(11)
        runs.append([transform.apply(CAPTION, generator) for _ in range(50)])
    assert runs[0] == runs[1] and len(set(runs[0])) > 10


def test_a_varying_transform_needs_the_generator() -> None:
    with pytest.raises(ValueError, match="generator"):
        _transform(caption_dropout_rate=0.5).apply(CAPTION, None)


@pytest.mark.parametrize(("field", "value", "message"), [
    ("keep_tokens_separator", ",|", r"keep_tokens_separator = ',\|' is not allowed; expected a separator without"),
    ("caption_dropout_rate", 1.5, r"caption_dropout_rate = 1.5 is not allowed; expected a number at least 0.0"),
    ("keep_tokens", -1, r"keep_tokens = -1 is not allowed"),
    ("prior_loss_weight", -0.5, r"prior_loss_weight = -0.5 is not allowed"),
])
def test_invalid_options_are_refused_by_name(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        DataOptions(**{field: value})  # type: ignore[arg-type]
