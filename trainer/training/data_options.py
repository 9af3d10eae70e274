"""What the dataset feeds each step: caption transforms, masked loss, class images (a config section)."""

from __future__ import annotations

from dataclasses import dataclass

from .settings import check_fields, invalid, setting


@dataclass(frozen=True)
class DataOptions:
    """What the dataset feeds each step: caption transforms (sd-scripts' semantics), masked loss, regularisation
    images. Set on the LoRA Dataset node; the run records them (metadata, resume state). All off: the plain
    captions, every pixel, no class images."""

    caption_prefix: str = setting("", "Text put before every training caption (with a space; the trigger word "
                                      "stays in the caption), as sd-scripts' caption_prefix.")
    caption_suffix: str = setting("", "Text put after every training caption (with a space), as sd-scripts' "
                                      "caption_suffix.")
    shuffle_caption: bool = setting(False, "Shuffle the comma-separated tags of each caption at every step; the "
                                           "kept tokens and the trigger word stay first.")
    keep_tokens: int = setting(0, "The first N comma-separated tags of each caption are never shuffled or dropped "
                                  "(e.g. 1 keeps the first tag in place).", min=0, max=255)
    keep_tokens_separator: str = setting("", "Instead of keep_tokens: the tags before this separator (e.g. |||) are "
                                             "kept, and those after a second one are kept at the end.")
    caption_dropout_rate: float = setting(0.0, "Share of steps an image is trained with an empty caption (the "
                                               "trigger word alone, when one is set); 0 = off.",
                                          min=0.0, max=1.0, step=0.01)
    caption_tag_dropout_rate: float = setting(0.0, "Chance of dropping each tag that is not kept (nor the trigger "
                                                   "word) at every step; 0 = off.", min=0.0, max=1.0, step=0.01)
    masked_loss: bool = setting(False, "Weight the loss of each pixel by the image's mask: a same-name image in a "
                                       "masks/ folder beside the images (white = train, black = ignore, grey = "
                                       "partly; its red channel, as sd-scripts), else the image's alpha channel. "
                                       "Images with neither train everywhere.")
    reg_folder: str = setting("", "Regularisation (class) images for prior preservation: a folder laid out like "
                                  "the dataset (an absolute path, or a folder inside ComfyUI's input folder); "
                                  "an image without a caption file takes its N_class folder's class name. As "
                                  "many class images are trained per epoch as training images. Empty = none.")
    prior_loss_weight: float = setting(1.0, "Loss weight of the regularisation images (sd-scripts' "
                                            "prior_loss_weight).", min=0.0, max=100.0, step=0.05)

    def __post_init__(self) -> None:
        check_fields(self)
        if "," in self.keep_tokens_separator:
            raise invalid("keep_tokens_separator", self.keep_tokens_separator,
                           "a separator without a comma (commas separate the tags), e.g. '|||'")

    @property
    def varies_captions(self) -> bool:
        """Whether a caption can differ from step to step (then its text is encoded at every step)."""
        return self.shuffle_caption or self.caption_dropout_rate > 0 or self.caption_tag_dropout_rate > 0
