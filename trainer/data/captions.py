"""Caption transforms at every step, as sd-scripts defines them: prefix and suffix, caption dropout, kept tokens,
tag shuffle and tag dropout. The trigger word is never dropped.

A caption is comma-separated tags. The kept tags are the first `keep_tokens`, or with `keep_tokens_separator`
the part before the separator (and the part after a second one, kept at the end). The other tags are shuffled,
then each is dropped with the tag dropout rate; a tag holding the trigger word is kept, right after the kept
tags. Caption dropout replaces the whole caption by the trigger word alone (empty without one). Every draw comes
from the run's generator, and none is made when the transforms are off.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..training.config import DataOptions

TAG_SEPARATOR = ","


def split_tags(text: str) -> list[str]:
    """The comma-separated tags of `text`, stripped; empty ones left out."""
    return [tag.strip() for tag in text.split(TAG_SEPARATOR) if tag.strip()]


@dataclass(frozen=True)
class CaptionTransform:
    """One image set's caption transform: the dataset options and the trigger word they keep."""

    options: DataOptions = DataOptions()
    trigger_word: str = ""
    affixes: bool = True  # caption_prefix / caption_suffix apply (training images, not class images)

    @property
    def varies(self) -> bool:
        """Whether the caption can differ from step to step (it draws from the generator)."""
        return self.options.varies_captions

    @property
    def is_identity(self) -> bool:
        """Whether every caption is trained as written."""
        options = self.options
        return not (self.varies or options.keep_tokens_separator
                    or (self.affixes and (options.caption_prefix or options.caption_suffix)))

    def apply(self, caption: str, generator: torch.Generator | None) -> str:
        """The caption one step trains with. `generator` (the run's) may be None only when not `varies`."""
        options = self.options
        text = caption
        if self.affixes:
            text = " ".join(part for part in (options.caption_prefix, caption, options.caption_suffix) if part)
        if self.is_identity:
            return text
        if options.caption_dropout_rate > 0 and _draw(generator, 1)[0] < options.caption_dropout_rate:
            return self.trigger_word
        if not (options.shuffle_caption or options.caption_tag_dropout_rate > 0 or options.keep_tokens_separator):
            return text
        kept, free, kept_at_end = self._parts(text)
        trigger = [tag for tag in free if self._holds_trigger(tag)]
        free = [tag for tag in free if not self._holds_trigger(tag)]
        if options.shuffle_caption and len(free) > 1:
            assert generator is not None
            free = [free[i] for i in torch.randperm(len(free), generator=generator).tolist()]
        if options.caption_tag_dropout_rate > 0 and free:
            draws = _draw(generator, len(free))
            free = [tag for tag, draw in zip(free, draws, strict=True) if draw >= options.caption_tag_dropout_rate]
        return f"{TAG_SEPARATOR} ".join(kept + trigger + free + kept_at_end)

    def _parts(self, text: str) -> tuple[list[str], list[str], list[str]]:
        """(kept tags, free tags, tags kept at the end)."""
        separator = self.options.keep_tokens_separator
        if separator and separator in text:
            head, rest = text.split(separator, 1)
            rest, _, tail = rest.partition(separator)
            return split_tags(head), split_tags(rest), split_tags(tail)
        tags = split_tags(text)
        keep = self.options.keep_tokens
        return tags[:keep], tags[keep:], []

    def _holds_trigger(self, tag: str) -> bool:
        return bool(self.trigger_word) and self.trigger_word.lower() in tag.lower()


def _draw(generator: torch.Generator | None, count: int) -> list[float]:
    """`count` uniform draws in [0, 1) from the run's generator."""
    if generator is None:
        raise ValueError("this caption transform draws at random: pass the run's generator")
    return torch.rand(count, generator=generator).tolist()
