"""Batch augmentation on the training device.

A whole batch is augmented at once: every geometric change (translation, rotation, scale,
shear, horizontal flip) of every image becomes one 2x3 affine matrix, and a single
``grid_sample`` applies them all; colour changes are per-image multiplies. No per-image Python
work, so the data path costs little next to the model (the airbench approach).

Policies, from none to strong, each scaled by a strength (0 = off, 1 = default magnitudes):

- none: identity.
- light: random translation up to 1/16 of the side (a random crop with zero padding), flip.
- standard: translation up to 1/8 of the side, rotation up to 10 degrees, scale 0.9-1.1, flip.
- strong: translation 1/8, rotation 20 degrees, scale 0.8-1.2, brightness and contrast +-30%,
  and a cut-out square of 1/4 the side.
- trivial: TrivialAugment-like: per image, one operation chosen uniformly (identity, translate
  x or y, rotate, shear x or y, brightness, contrast, solarize, posterize) with a uniformly drawn
  magnitude; plus flip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from study.config import AUGMENT_POLICIES as POLICIES  # one list for config checks, tuning and here

# policy -> (translate as fraction of side, rotation degrees, scale spread, colour spread, cut-out fraction)
_MAGNITUDES = {
    "none": (0.0, 0.0, 0.0, 0.0, 0.0),
    "light": (0.0625, 0.0, 0.0, 0.0, 0.0),
    "standard": (0.125, 10.0, 0.1, 0.0, 0.0),
    "strong": (0.125, 20.0, 0.2, 0.3, 0.25),
}
_TRIVIAL_OPS = (
    "identity",
    "translate_x",
    "translate_y",
    "rotate",
    "shear_x",
    "shear_y",
    "brightness",
    "contrast",
    "solarize",
    "posterize",
)


@dataclass(frozen=True)
class BatchAugment:
    """Augments float batches (B, C, H, W) with values in [0, 1]; output stays in [0, 1]."""

    policy: str = "light"
    strength: float = 1.0
    hflip: bool = True

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"unknown augmentation policy {self.policy!r}; valid: {', '.join(POLICIES)}")

    @property
    def active(self) -> bool:
        return self.policy != "none" and self.strength > 0

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self.active:
            return x
        if self.policy == "trivial":
            return self._trivial(x, generator)
        translate, degrees, scale, colour, cutout = (m * self.strength for m in _MAGNITUDES[self.policy])
        b = x.shape[0]
        u = lambda: torch.rand(b, device=x.device, generator=generator) * 2 - 1  # noqa: E731  U(-1, 1)
        flip = self._flips(b, x.device, generator)
        theta = _affine(
            tx=u() * translate * 2,  # affine_grid coordinates span [-1, 1]: a side is 2 units
            ty=u() * translate * 2,
            angle=u() * math.radians(degrees),
            scale=1 + u() * scale,
            shear_x=torch.zeros(b, device=x.device),
            shear_y=torch.zeros(b, device=x.device),
            flip=flip,
        )
        x = _warp(x, theta)
        if colour > 0:
            x = _brightness(x, 1 + u() * colour)
            x = _contrast(x, 1 + u() * colour)
        if cutout > 0:
            x = _cutout(x, cutout, generator)
        return x

    def _flips(self, b: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        if not self.hflip:
            return torch.ones(b, device=device)
        return torch.where(torch.rand(b, device=device, generator=generator) < 0.5, -1.0, 1.0)

    def _trivial(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b, dev, s = x.shape[0], x.device, self.strength
        op = torch.randint(len(_TRIVIAL_OPS), (b,), device=dev, generator=generator)
        mag = torch.rand(b, device=dev, generator=generator) * s
        sign = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0)
        signed = mag * sign
        is_op = lambda name: op == _TRIVIAL_OPS.index(name)  # noqa: E731
        zero = torch.zeros(b, device=dev)
        theta = _affine(
            tx=torch.where(is_op("translate_x"), signed * 0.3 * 2, zero),
            ty=torch.where(is_op("translate_y"), signed * 0.3 * 2, zero),
            angle=torch.where(is_op("rotate"), signed * math.radians(30), zero),
            scale=torch.ones(b, device=dev),
            shear_x=torch.where(is_op("shear_x"), signed * 0.3, zero),
            shear_y=torch.where(is_op("shear_y"), signed * 0.3, zero),
            flip=self._flips(b, dev, generator),
        )
        x = _warp(x, theta)
        one = torch.ones(b, device=dev)
        x = _brightness(x, torch.where(is_op("brightness"), 1 + signed * 0.9, one))
        x = _contrast(x, torch.where(is_op("contrast"), 1 + signed * 0.9, one))
        # solarize: invert pixels above a threshold that falls from 1 to 0 with the magnitude
        threshold = torch.where(is_op("solarize"), 1 - mag.clamp(max=1), one + 1).view(b, 1, 1, 1)
        x = torch.where(x >= threshold, 1 - x, x)
        # posterize: keep 8 - 4*magnitude bits
        levels = torch.where(is_op("posterize"), 2 ** (8 - (4 * mag.clamp(max=1)).round()), 256 * one).view(b, 1, 1, 1)
        x = torch.where(levels < 256, torch.floor(x * (levels - 1) + 0.5) / (levels - 1), x)
        return x


def _affine(tx, ty, angle, scale, shear_x, shear_y, flip) -> torch.Tensor:
    """Per-image 2x3 matrices mapping output to input coordinates (affine_grid's convention)."""
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = cos * flip / scale
    b_ = (-sin + shear_x) / scale
    c = (sin * flip + shear_y) / scale
    d = cos / scale
    row0 = torch.stack([a, b_, tx], dim=1)
    row1 = torch.stack([c, d, ty], dim=1)
    return torch.stack([row0, row1], dim=1)


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = affine_grid(theta.to(x.dtype), x.shape[-2], x.shape[-1])
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, height, width), align_corners=False)``, computed as one
    broadcast product with a cached base grid. Written by hand because torch's version copies
    the base grid once per image first, which made it three times slower on a CPU."""
    base = _base_grid(height, width, theta.device, theta.dtype)
    return torch.matmul(base, theta.transpose(1, 2)).view(-1, height, width, 2)


@lru_cache(maxsize=16)
def _base_grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(height * width, 3) rows of (x, y, 1): pixel centres in [-1, 1] coordinates."""
    xs = (torch.arange(width, device=device, dtype=dtype) * 2 + 1) / width - 1
    ys = (torch.arange(height, device=device, dtype=dtype) * 2 + 1) / height - 1
    grid = torch.stack(
        [
            xs.expand(height, width),
            ys.view(height, 1).expand(height, width),
            torch.ones(height, width, device=device, dtype=dtype),
        ],
        dim=-1,
    )
    return grid.view(height * width, 3)


def _brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp(0, 1)


def _contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def _cutout(x: torch.Tensor, fraction: float, generator: torch.Generator) -> torch.Tensor:
    b, _, h, w = x.shape
    size_h, size_w = max(1, int(h * fraction)), max(1, int(w * fraction))
    cy = torch.randint(h, (b, 1, 1), device=x.device, generator=generator)
    cx = torch.randint(w, (b, 1, 1), device=x.device, generator=generator)
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    hole = ((ys - cy).abs() <= size_h // 2) & ((xs - cx).abs() <= size_w // 2)
    return x * (~hole).unsqueeze(1).to(x.dtype)


def to_model_input(
    images_uint8_nhwc: torch.Tensor,
    input_size: int,
    mean: torch.Tensor,
    std: torch.Tensor,
    augment: BatchAugment | None = None,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """uint8 (B, H, W, 3) batch -> normalised float (B, 3, S, S) on the same device, in
    channels-last layout if asked, else contiguous.

    Augmentation runs at the cached resolution (cheaper), then the batch is resized to the
    model's input, then normalised with the model's statistics. Every step writes a tensor this
    function owns, so the conversion is one copy and the normalisation works in place, in the
    plain layout (per-channel arithmetic on a channels-last tensor was five times slower on a
    CPU); a channels-last result costs one more copy at the end. On a CPU the whole path costs
    a few milliseconds per batch of 64, a few percent of a small model's step or less.
    """
    b, h, w, c = images_uint8_nhwc.shape
    x = torch.empty((b, c, h, w), dtype=torch.float32, device=images_uint8_nhwc.device)
    x.copy_(images_uint8_nhwc.permute(0, 3, 1, 2))  # values 0..255
    scale = 1 / (255 * std.view(1, -1, 1, 1))
    if augment is not None and augment.active:
        x = augment(x.mul_(1 / 255), generator)  # augmentation works on [0, 1]
        scale = 1 / std.view(1, -1, 1, 1)
    if h != input_size or w != input_size:  # a linear map: it commutes with the scaling below
        x = F.interpolate(
            x, size=(input_size, input_size), mode="bilinear", align_corners=False, antialias=w > input_size
        )
    x = x.mul_(scale).sub_(mean.view(1, -1, 1, 1) / std.view(1, -1, 1, 1))
    # The layout asked for, whatever the path above produced: it decides which kernels run.
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
