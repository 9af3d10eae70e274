"""Low-rank factorisation of one layer's delta: exact SVD, randomised SVD, or the exact SVD of a product up @ down.

A delta `D` [out, in] (conv kernels flattened to in*kh*kw) is written as `up @ down` with up [out, k] and
down [k, in]; `up = U_k sqrt(S_k)`, `down = sqrt(S_k) Vh_k`, so both halves have the same scale (better in
fp16). The Frobenius error of the best rank-k approximation is the norm of the discarded singular values
(Eckart–Young), which is what the tools report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# torch.svd_lowrank oversampling and power iterations; enough for LoRA-sized ranks to reach fp32 noise
# on spectra that decay (checked against the exact SVD in the tests).
LOWRANK_OVERSAMPLE = 10
LOWRANK_NITER = 4
# "rank far below the layer size": randomised SVD only when (rank + oversample) * this <= min(out, in).
LOWRANK_FACTOR = 4
METHODS = ("auto", "exact", "lowrank")


@dataclass(frozen=True)
class Spectrum:
    """The thin SVD of one delta: D ≈ U diag(S) Vh, singular values descending, on the compute device.

    `complete` is False for a randomised SVD, which finds only the leading values; `norm` is ||D||_F either way.
    `length` is min(out, in): how many singular values the full matrix has (the rest of `S` are zeros).
    """

    U: torch.Tensor  # [out, n]
    S: torch.Tensor  # [n]
    Vh: torch.Tensor  # [n, in]
    norm: float
    length: int
    complete: bool

    def factors(self, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(up [out, k], down [k, in]) on the CPU, fp32, k = min(rank, len(S)), both halves scaled by sqrt(S)."""
        k = min(rank, int(self.S.shape[0]))
        root = self.S[:k].sqrt()
        up = self.U[:, :k] * root
        down = root[:, None] * self.Vh[:k]
        return up.float().cpu().contiguous(), down.float().cpu().contiguous()

    def kept_share(self, rank: int) -> float:
        """The share of ||D||_F that the leading `rank` singular values keep (1.0 for a zero delta)."""
        if self.norm == 0.0:
            return 1.0
        return min(1.0, float(self.S[:rank].pow(2).sum().sqrt()) / self.norm)

    def error(self, rank: int) -> float:
        """||D - D_rank||_F: the norm of the singular values left out.

        From the discarded values themselves when the spectrum is complete (no cancellation); a randomised SVD
        knows only ||D||_F and the kept values, so then it is sqrt(||D||^2 - kept^2), good to ~sqrt(eps) ||D||.
        """
        if self.complete:
            return float(self.S[rank:].double().pow(2).sum().sqrt())
        kept = float(self.S[:rank].double().pow(2).sum())
        return max(0.0, self.norm ** 2 - kept) ** 0.5


def compute_device(device: str | torch.device | None = None) -> torch.device:
    """The device to factorise on: the one asked, else the GPU when there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def product_spectrum(up: torch.Tensor, down: torch.Tensor, device: torch.device) -> Spectrum:
    """The exact SVD of `up @ down` (up [out, r], down [r, in]) without forming the product.

    QR of both factors leaves an r x r core: up = Qu Ru, down^T = Qd Rd, so up @ down = Qu (Ru Rd^T) Qd^T and
    the SVD of the core gives the whole spectrum — cost O((out + in) r^2), not O(out in min(out, in)).
    """
    up = up.to(device=device, dtype=torch.float32).flatten(1)
    down = down.to(device=device, dtype=torch.float32).flatten(1)
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ru @ rd.T, full_matrices=False)
    length = min(int(up.shape[0]), int(down.shape[1]))
    return Spectrum(U=qu @ u, S=s, Vh=vh @ qd.T, norm=float(s.pow(2).sum().sqrt()), length=length, complete=True)


def use_lowrank(shape: tuple[int, int], rank: int, method: str) -> bool:
    """Whether `method` ('auto', 'exact', 'lowrank') means a randomised SVD for a `shape` delta cut to `rank`."""
    if method == "lowrank":
        return True
    return method == "auto" and (rank + LOWRANK_OVERSAMPLE) * LOWRANK_FACTOR <= min(shape)


def matrix_spectrum(delta: torch.Tensor, rank: int, device: torch.device, method: str = "auto",
                    seed: int = 0) -> Spectrum:
    """The SVD of a full delta [out, in]: exact (all values), or randomised (the leading rank + oversample).

    The randomised SVD draws from a generator seeded with `seed`, so the same input gives the same file.
    """
    matrix = delta.to(device=device, dtype=torch.float32).flatten(1)
    length = min(matrix.shape)
    norm = float(torch.linalg.matrix_norm(matrix))
    if use_lowrank(tuple(matrix.shape), rank, method):
        q = min(rank + LOWRANK_OVERSAMPLE, length)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            u, s, v = torch.svd_lowrank(matrix, q=q, niter=LOWRANK_NITER)
        return Spectrum(U=u, S=s, Vh=v.T, norm=norm, length=length, complete=q == length)
    u, s, vh = torch.linalg.svd(matrix, full_matrices=False)
    return Spectrum(U=u, S=s, Vh=vh, norm=norm, length=length, complete=True)
