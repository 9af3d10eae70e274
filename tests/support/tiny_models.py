"""Tiny denoiser, data and config shared by the training-engine tests.

The model uses SD UNet layer names (attn1/attn2 to_q..., ff.net, proj_in, in_layers) so target
selection, export and the loop see the same names as on a real UNet, at a size that trains in ms.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.training.config import LoraShape, Optimisation, TrainConfig
from trainer.training.layer_selection import select_layers
from trainer.training.loop import StepRecord, TrainResult, train
from trainer.training.objective import NoiseSchedule
from trainer.training.resume_state import TrainState
from trainer.training.trainable_lora import LoraAdapterSet

LATENT = (4, 8, 8)


COND_TOKENS, COND_DIM, HIDDEN = 3, 8, 16


class _Attention(nn.Module):
    def __init__(self, query_dim: int, context_dim: int) -> None:
        super().__init__()
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(context_dim, query_dim, bias=False)
        self.to_v = nn.Linear(context_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim), nn.Identity())

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.to_out(weights @ v)


class _FeedForward(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        project = nn.Module()
        project.proj = nn.Linear(dim, dim * 2)
        self.net = nn.Sequential(project, nn.GELU(), nn.Linear(dim * 2, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](F.gelu(self.net[0].proj(x)))


class _TransformerBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn1 = _Attention(HIDDEN, HIDDEN)
        self.attn2 = _Attention(HIDDEN, COND_DIM)
        self.ff = _FeedForward(HIDDEN)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.attn1(x)
        x = x + self.attn2(x, context)
        return x + self.ff(x)


class TinyDenoiser(nn.Module):
    """conv_in -> res block (3x3 convs) -> proj_in (1x1 conv) -> transformer block -> proj_out -> conv_out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(LATENT[0], HIDDEN, 3, padding=1)
        self.time_embed = nn.Linear(1, HIDDEN)
        self.res = nn.Module()
        self.res.in_layers = nn.Sequential(nn.GroupNorm(4, HIDDEN), nn.SiLU(), nn.Conv2d(HIDDEN, HIDDEN, 3, padding=1))
        self.res.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(HIDDEN, HIDDEN))
        self.res.out_layers = nn.Sequential(nn.GroupNorm(4, HIDDEN), nn.SiLU(), nn.Identity(),
                                            nn.Conv2d(HIDDEN, HIDDEN, 3, padding=1))
        self.attn = nn.Module()
        self.attn.proj_in = nn.Conv2d(HIDDEN, HIDDEN, 1)
        self.attn.transformer_blocks = nn.ModuleList([_TransformerBlock()])
        self.attn.proj_out = nn.Conv2d(HIDDEN, HIDDEN, 1)
        self.conv_out = nn.Conv2d(HIDDEN, LATENT[0], 3, padding=1)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        emb = self.time_embed(timesteps.to(x.dtype).unsqueeze(1) / 1000.0)
        h = self.conv_in(x)
        r = self.res.in_layers(h) + self.res.emb_layers(emb)[:, :, None, None]
        h = h + self.res.out_layers(r)
        b, c, height, width = h.shape
        tokens = self.attn.proj_in(h).flatten(2).transpose(1, 2)
        tokens = self.attn.transformer_blocks[0](tokens, cond)
        h = h + self.attn.proj_out(tokens.transpose(1, 2).reshape(b, c, height, width))
        return self.conv_out(h)


def make_model(seed: int = 0) -> TinyDenoiser:
    torch.manual_seed(seed)
    return TinyDenoiser().eval()


def attach(model: nn.Module, shape: LoraShape, seed: int = 0) -> LoraAdapterSet:
    adapters = LoraAdapterSet.from_config(shape, seed)
    adapters.attach(model, select_layers({"unet": model}, shape)["unet"])
    return adapters


def dataset(n: int = 4, seed: int = 123) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *LATENT, generator=g), torch.randn(n, COND_TOKENS, COND_DIM, generator=g)


def batch_fn(latents: torch.Tensor, cond: torch.Tensor, batch_size: int, shuffle: bool = True) -> Any:
    """batches(index, generator): random items from the generator (shuffle) or items in order."""
    n = latents.shape[0]

    def batches(index: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if shuffle:
            idx = torch.randperm(n, generator=generator)[:batch_size]
        else:
            idx = (torch.arange(batch_size) + index * batch_size) % n
        return latents[idx], cond[idx]

    return batches


def train_tiny(cfg: TrainConfig, schedule: NoiseSchedule, stop_at: int | None = None,
               start: TrainState | None = None, init_seed: int = 0,
               on_checkpoint: Any = None) -> tuple[dict[str, torch.Tensor], TrainResult, list[StepRecord]]:
    """The tiny denoiser with a LoRA of cfg.lora (initialised from `init_seed`) trained on the tiny dataset in
    batches of 2, stopped after step `stop_at` or continued from `start`: (LoRA state, result, step records)."""
    model = make_model()
    adapters = attach(model, cfg.lora, seed=init_seed)
    latents, cond = dataset()
    records: list[StepRecord] = []
    stop = (lambda: "stop" if records and records[-1].step >= stop_at else None) if stop_at else None
    result = train(model, adapters, batch_fn(latents, cond, 2), schedule, cfg, records.append, should_stop=stop,
                   start_state=start, on_checkpoint=on_checkpoint)
    return adapters.state_dict(), result, records


def config(**optimisation: Any) -> TrainConfig:
    lora = optimisation.pop("lora", LoraShape(rank=4, alpha=4.0, targets="attention_ff_conv"))
    defaults: dict[str, Any] = {"steps": 6, "learning_rate": 1e-2, "batch_size": 2, "seed": 7}
    defaults.update(optimisation)
    return TrainConfig(lora=lora, optimisation=Optimisation(**defaults))


class TinyTextEncoder(nn.Module):
    """Caption -> context [B, 3, COND_DIM] through CLIP-named layers (self_attn.q_proj, mlp.fc1/fc2)."""

    LAYERS = ("layer.self_attn.q_proj", "layer.mlp.fc1", "layer.mlp.fc2")

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(1)
        self.embed = nn.Embedding(16, COND_DIM)
        self.layer = nn.Module()
        self.layer.self_attn = nn.Module()
        self.layer.self_attn.q_proj = nn.Linear(COND_DIM, COND_DIM)
        self.layer.mlp = nn.Module()
        self.layer.mlp.fc1, self.layer.mlp.fc2 = nn.Linear(COND_DIM, 16), nn.Linear(16, COND_DIM)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.3)

    def forward(self, captions: tuple[str, ...]) -> torch.Tensor:
        ids = torch.tensor([[ord(ch) % 16 for ch in c[:COND_TOKENS].ljust(COND_TOKENS)] for c in captions])
        x = self.layer.self_attn.q_proj(self.embed(ids))
        return x + self.layer.mlp.fc2(torch.relu(self.layer.mlp.fc1(x)))


def caption_batches(n: int = 4, batch_size: int = 2, seed: int = 123) -> Any:
    """batches(index, generator) -> (latents, captions): the condition is text, encoded by the denoiser."""
    latents, _ = dataset(n, seed)
    captions = ("cat", "dog", "owl", "elk", "emu", "yak")[:n]

    def batches(index: int, generator: torch.Generator) -> tuple[torch.Tensor, tuple[str, ...]]:
        idx = torch.randperm(n, generator=generator)[:batch_size].tolist()
        return latents[idx], tuple(captions[i] for i in idx)
    return batches


def text_denoiser(model: nn.Module, text_encoder: TinyTextEncoder) -> Any:
    """A denoiser that encodes its captions itself, so a LoRA on the text encoder gets gradients."""
    return lambda x, t, captions: model(x, t, text_encoder(captions))
