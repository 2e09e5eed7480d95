"""Models come from timm's registry; their normalisation and input size from their own
pretrained config unless the user overrides them."""

from __future__ import annotations

import difflib
from functools import lru_cache

import timm
import torch
from torch import nn

from study.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@lru_cache(maxsize=1)
def _all_names() -> tuple[str, ...]:
    return tuple(timm.list_models())


def check_model_name(name: str) -> None:
    """Refuse a name timm does not know, suggesting the closest valid names."""
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, _all_names(), n=3, cutoff=0.5)
    hint = f"closest valid names: {', '.join(close)}" if close else "see timm.list_models() for valid names"
    raise UserError(f"model {name!r} is not a timm model; {hint}")


def create_model(name: str, num_classes: int) -> nn.Module:
    """A freshly initialised timm model with a ``num_classes`` classifier."""
    check_model_name(name)
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


def normalization(model: nn.Module, mode: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for inputs in [0, 1].

    'model' uses the model's pretrained config: MobileViT expects mean 0 and std 1, ImageNet CNNs
    ImageNet statistics; a wrong choice silently costs accuracy with pretrained weights.
    """
    if mode == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD
    if mode == "half":
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if mode == "model":
        cfg = getattr(model, "pretrained_cfg", None) or {}
        return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))
    raise ValueError(f"unknown normalization {mode!r}")


def native_input_size(model_name: str) -> int:
    """The square input size the model was pretrained at (e.g. 256 for MobileViT)."""
    cfg = timm.get_pretrained_cfg(model_name)
    size = getattr(cfg, "input_size", None) if cfg is not None else None
    return int(size[-1]) if size else 224


def count_parameters(model: nn.Module) -> int:
    return int(sum(p.numel() for p in model.parameters()))


def model_size_mb(model: nn.Module) -> float:
    """Size of the weights and buffers in MiB, as stored in float32."""
    total = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    return total / 2**20


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to ``device``; on CUDA also channels-last, which convolutions prefer."""
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
