"""Draws a small captioned dataset (no download): a red ring on varied backgrounds, with .txt captions."""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image, ImageDraw

BACKGROUNDS = [(30, 60, 120), (200, 200, 190), (40, 110, 60), (90, 40, 90), (230, 180, 80), (20, 20, 20)]
PLACES = ["a blue wall", "a grey table", "green grass", "a purple cloth", "yellow sand", "a dark room"]


def make_demo_dataset(folder: Path, count: int = 6, size: int = 96, seed: int = 0, trigger: str = "lrlring") -> Path:
    """`count` images with same-name captions in `folder`; returns the folder."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        background = BACKGROUNDS[i % len(BACKGROUNDS)]
        image = Image.new("RGB", (size, size), background)
        draw = ImageDraw.Draw(image)
        r = rng.randint(size // 5, size // 3)
        cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=(220, 30, 30), width=max(3, size // 12))
        image.save(folder / f"ring_{i:02d}.png")
        (folder / f"ring_{i:02d}.txt").write_text(f"{trigger}, a red ring on {PLACES[i % len(PLACES)]}")
    return folder


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--count", type=int, default=6)
    args = parser.parse_args()
    print(make_demo_dataset(args.folder, args.count))
