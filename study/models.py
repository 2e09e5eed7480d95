"""Models come from timm's registry; their normalisation and input size from their own
pretrained config unless the user overrides them; their initial weights and fine-tuning mode
from the study's ``[train]`` settings (see study/transfer.py)."""

from __future__ import annotations

import difflib
import math
from functools import lru_cache

import timm
import torch
from torch import nn

from study import transfer
from study.config import NATIVE, TrainConfig
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


def create_model(name: str, num_classes: int, hp: TrainConfig | None = None) -> nn.Module:
    """A timm model with a new ``num_classes`` classifier: randomly initialised, or starting from
    the weights ``hp`` asks for (timm's pretrained ones or a local file) with its fine-tuning
    mode applied."""
    check_model_name(name)
    source = transfer.weights_source(name, hp.pretrained, hp.weight_files) if hp is not None else None
    if source is not None and source.kind == "hub":
        model = transfer.from_hub(name, num_classes, source.location)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
        if source is not None:
            transfer.from_file(model, name, source.location)
    init_classifier(model)
    if hp is not None:
        transfer.apply_finetune(model, name, hp.finetune, hp.freeze_stages)
    return model


CLASSIFIER_INIT_STD = 0.01


@torch.no_grad()
def init_classifier(model: nn.Module) -> None:
    """Draw the new classifier's weights from N(0, 0.01²) with zero bias (torchvision's choice for
    MobileNetV2), so that every model starts at a loss near ln(classes).

    timm's own initialisation differs per family: the Google-style one of MobileNetV2 and
    EfficientNet draws the classifier from U(±1/√classes), which for 10 classes gives logits with
    a standard deviation near 6 and a first loss near 8; from scratch, MobileNetV2 then spent its
    whole small-data budget recovering (27% on the default study's smallest subset, worse on the
    next one). The classifier is always new here (never the pretraining one), so this is safe for
    fine-tuning too."""
    head = model.get_classifier() if hasattr(model, "get_classifier") else None
    if isinstance(head, (nn.Linear, nn.Conv2d)):
        nn.init.trunc_normal_(
            head.weight, std=CLASSIFIER_INIT_STD, a=-2 * CLASSIFIER_INIT_STD, b=2 * CLASSIFIER_INIT_STD
        )
        if head.bias is not None:
            nn.init.zeros_(head.bias)


def input_size_for(model_name: str, input_size: int | str, image_size: int) -> int:
    """The side of the model's input: ``train.input_size``, where 0 means the cached image size
    and 'native' the size the model was pretrained at."""
    if input_size == NATIVE:
        return native_input_size(model_name)
    return int(input_size) or image_size


def preflight(models: list[str], hp: TrainConfig, image_size: int) -> list[str]:
    """Check, before any data is decoded or any run trained, that every model can be built as
    the settings ask: weights at hand (timm's are fetched into its cache now, when online),
    weight files that fit, a fine-tuning mode the model supports. Returns warnings."""
    warnings = []
    for name in models:
        source = transfer.weights_source(name, hp.pretrained, hp.weight_files)
        skeleton = _skeleton(name)  # shapes only, no memory for weights
        if source is not None and source.kind == "hub":
            transfer.from_hub(name, 2, source.location)
        elif source is not None:
            transfer.check_fits(skeleton, transfer.read_state_dict(name, source.location), name, source.location)
        transfer.frozen_parameters(skeleton, name, hp.finetune, hp.freeze_stages)
        if source is None and (hp.finetune == "head" or hp.freeze_stages):
            warnings.append(
                f"model {name!r} has no pretrained weights (no --pretrained or --weights), yet "
                "train.finetune/freeze_stages keep parts of it at their random initialisation"
            )
        size = input_size_for(name, hp.input_size, image_size)
        message = interpolation_warning(skeleton, name, size)
        if message:
            warnings.append(message)
    return warnings


def _skeleton(name: str) -> nn.Module:
    """The model on the meta device: its structure and shapes, built in milliseconds."""
    try:
        with torch.device("meta"):
            return timm.create_model(name, pretrained=False, num_classes=2).eval()
    except Exception:  # a model whose constructor needs real tensors: build it for real
        return timm.create_model(name, pretrained=False, num_classes=2).eval()


def interpolation_warning(model: nn.Module, model_name: str, input_size: int) -> str | None:
    """A warning when MobileViT blocks would resize their feature maps at ``input_size``.

    A MobileViT block unfolds its feature map into patches (2x2 in timm's MobileViT and
    MobileViT-v2) and bilinearly resizes the map first when a side is not a multiple of the
    patch size. The blocks sit at strides 8, 16 and 32, so the input side must be a multiple of
    32 x 2 = 64 to avoid it (256 works, 224 interpolates at the last stage). Found by running the
    model on the meta device, so it holds for any model with such blocks.
    """
    from timm.models.mobilevit import MobileVitBlock, MobileVitV2Block

    sides = _block_inputs(model, (MobileVitBlock, MobileVitV2Block), input_size)
    bad = [(name, side, patch) for name, side, patch in sides if side % patch]
    if not bad:
        return None
    probe = 1024  # a side every stride divides: gives each block's stride
    multiple = math.lcm(
        *((probe // side) * patch for _, side, patch in _block_inputs(model, (MobileVitBlock, MobileVitV2Block), probe))
    )
    below, above = (input_size // multiple) * multiple, (input_size // multiple + 1) * multiple
    name, side, patch = bad[0]
    suggestion = f"{below} or {above}" if below else str(above)
    return (
        f"model {model_name!r} at input {input_size} px interpolates inside its MobileViT blocks ({name} sees a "
        f"{side}x{side} map, "
        f"not a multiple of its {patch}-px patches); use train.input_size a multiple of {multiple}, e.g. {suggestion}"
    )


def _block_inputs(model: nn.Module, kinds: tuple, input_size: int) -> list[tuple[str, int, int]]:
    """(block name, side of its input map, patch side) for every block of ``kinds``."""
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, kinds)]
    if not blocks:
        return []
    seen: list[tuple[str, int, int]] = []
    hooks = [
        m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0].shape[-1], m.patch_size[-1])))
        for name, m in blocks
    ]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, input_size, input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return seen


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


def to_device(model: nn.Module, device: torch.device, channels_last: bool | None = None) -> nn.Module:
    """Move a model to ``device``, in channels-last layout if asked (None: on CUDA only)."""
    model = model.to(device)
    if channels_last if channels_last is not None else device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model
