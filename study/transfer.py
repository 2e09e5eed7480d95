"""Transfer learning: where a model's initial weights come from, and which of its parts train.

Weights come from timm's pretrained config (the Hugging Face hub, through its local cache, so
``HF_HUB_OFFLINE=1`` works once the cache is filled) or from a local file: a ``.safetensors`` or
``.pth`` state dict of the same timm model (what timm's hub files are, and what
``torch.save(model.state_dict(), path)`` writes). The classifier of the file is dropped and a
new one, sized for the dataset's classes, is initialised.

Fine-tuning modes: ``full`` trains everything; ``head`` trains only the new classifier (a linear
probe); ``full`` with ``freeze_stages=K`` keeps the stem and the first K stages fixed, stages as
timm's coarse ``group_matcher`` counts them (ResNet's layer1-4, MobileViT's stages.0-4, a ViT's
blocks). Frozen parts also keep their BatchNorm statistics (timm's ``freeze``), so a linear probe
really probes the pretrained features.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from study.errors import UserError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclass(frozen=True)
class WeightsSource:
    """Where one model's initial weights come from: 'hub' (timm's pretrained config) or 'file'."""

    kind: str
    location: str  # the hub id or URL, or the file path


def weights_source(model_name: str, pretrained: bool, files: dict[str, str]) -> WeightsSource | None:
    """The source a study's settings choose for ``model_name``; None means random initialisation.
    A file given for the model wins over timm's weights."""
    if model_name in files:
        return WeightsSource("file", files[model_name])
    if pretrained:
        cfg = timm.models.get_pretrained_cfg(model_name)
        location = (cfg.hf_hub_id or cfg.url or cfg.file or "") if cfg is not None else ""
        if not location:
            raise UserError(
                f"model {model_name!r} has no pretrained weights in timm; drop it from models, pass --weights "
                f"{model_name}=FILE, "
                "or run without --pretrained"
            )
        return WeightsSource("hub", location)
    return None


def file_digest(path: str) -> str:
    """SHA-256 of a weights file: what the study's settings record, so a moved file is the same
    weights and a changed one is not."""
    with open(path, "rb") as f:
        return "sha256:" + hashlib.file_digest(f, "sha256").hexdigest()


# -- loading --------------------------------------------------------------------------------


def from_hub(model_name: str, num_classes: int, location: str) -> nn.Module:
    """timm's pretrained model with a new ``num_classes`` classifier; a clear UserError when the
    weights cannot be had (offline with an empty cache, hub unreachable)."""
    try:
        model = timm.create_model(model_name, pretrained=True, num_classes=num_classes)
    except Exception as exc:  # hub, network and cache errors come in many types; all mean the same here
        raise UserError(_hub_failure(model_name, location, exc)) from None
    if num_classes == model.pretrained_cfg.get("num_classes"):
        # timm keeps the pretrained classifier when the class counts happen to match; ours is
        # always new, since the dataset's classes are not the pretraining classes.
        model.reset_classifier(num_classes)
    return model


def _hub_failure(model_name: str, location: str, exc: Exception) -> str:
    from huggingface_hub import constants

    on_hub = "://" not in location
    cache = constants.HF_HUB_CACHE if on_hub else torch.hub.get_dir()
    if constants.HF_HUB_OFFLINE and on_hub:
        reason = f"HF_HUB_OFFLINE=1 is set and they are not in the cache {cache}"
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    fetch = f"python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\""
    return (
        f"cannot get timm's pretrained weights for {model_name!r} ({location}): {reason}; "
        f"fetch them once online ({fetch}; copy the cache {cache} to offline machines and set HF_HUB_OFFLINE=1), "
        f"or pass --weights {model_name}=FILE with a .safetensors/.pth state dict"
    )


def read_state_dict(model_name: str, path: str) -> dict[str, torch.Tensor]:
    """The tensors of a local weights file (safetensors, or a pickle loaded with weights_only)."""
    p = Path(path)
    how = f"pass --weights {model_name}=FILE with a .safetensors or .pth state dict of timm's {model_name!r}"
    if not p.is_file():
        raise UserError(f"weights file {path!r} for model {model_name!r} does not exist; {how}")
    if p.suffix.lower() not in WEIGHT_SUFFIXES:
        raise UserError(f"weights file {path!r} has suffix {p.suffix!r}; valid: {', '.join(WEIGHT_SUFFIXES)}")
    try:
        state = timm.models.load_state_dict(str(p), weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors differ; each means an unreadable file
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"weights file {path!r} could not be read ({type(exc).__name__}: {reason}); {how}") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"weights file {path!r} does not hold a state dict (names to tensors); {how}")
    return state


def classifier_names(model: nn.Module) -> list[str]:
    """Module names of the model's classifier(s) (several for distilled ViTs)."""
    heads = model.get_classifier()
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    return [name for name, module in model.named_modules() if any(module is h for h in heads)]


def _in_head(key: str, heads: list[str]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], model_name: str, path: str) -> dict[str, torch.Tensor]:
    """``state`` without the classifier, refused unless it gives every other tensor of ``model``
    with the right shape (a file of another model would otherwise load partly, silently)."""
    heads = classifier_names(model)
    state = {k: v for k, v in state.items() if not _in_head(k, heads)}
    expected = {k: v.shape for k, v in model.state_dict().items() if not _in_head(k, heads)}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k])]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected, e.g. {unexpected[0]}")
        if wrong:
            problems.append(
                f"{len(wrong)} of another shape, e.g. {wrong[0]} {tuple(state[wrong[0]].shape)} vs "
                f"{tuple(expected[wrong[0]])}"
            )
        raise UserError(
            f"weights file {path!r} does not fit model {model_name!r} ({'; '.join(problems)}); "
            f"give a state dict of timm's {model_name!r}, e.g. saved with torch.save(model.state_dict(), FILE)"
        )
    return state


def from_file(model: nn.Module, model_name: str, path: str) -> nn.Module:
    """Load a local state dict into ``model``, keeping the model's own new classifier."""
    state = check_fits(model, read_state_dict(model_name, path), model_name, path)
    model.load_state_dict(state, strict=False)  # strict apart from the classifier, checked above
    return model


# -- fine-tuning modes ------------------------------------------------------------------------


def stage_groups(model: nn.Module, model_name: str) -> list[list[str]]:
    """Parameter names in timm's coarse groups, in order: stem, stage 1, ..., stage S, head."""
    from timm.models import group_parameters

    try:
        matcher = model.group_matcher(coarse=True)
    except (AttributeError, NotImplementedError):
        raise UserError(
            f"model {model_name!r} does not describe its stages to timm; use train.finetune='head' or freeze_stages=0"
        ) from None
    groups = group_parameters(model, matcher)
    return [groups[i] for i in sorted(groups)]


def frozen_parameters(model: nn.Module, model_name: str, finetune: str, freeze_stages: int) -> set[str]:
    """Names of the parameters that the fine-tuning mode keeps fixed."""
    if finetune == "head":
        heads = classifier_names(model)
        return {name for name, _ in model.named_parameters() if not _in_head(name, heads)}
    if freeze_stages == 0:
        return set()
    groups = stage_groups(model, model_name)
    n_stages = len(groups) - 2  # without the stem and the head
    if freeze_stages > n_stages:
        raise UserError(
            f"train.freeze_stages={freeze_stages} is more than the {n_stages} stages of model {model_name!r}; "
            f"use 1 to {n_stages}, or train.finetune='head' to train only the classifier"
        )
    return {name for group in groups[: freeze_stages + 1] for name in group}


def apply_finetune(model: nn.Module, model_name: str, finetune: str, freeze_stages: int) -> nn.Module:
    """Freeze what the mode keeps fixed: parameters stop training, and BatchNorm layers among
    them become timm's FrozenBatchNorm2d, so their statistics stay the pretrained ones although
    the training loop puts the model in train mode."""
    from timm.utils import freeze

    frozen = frozen_parameters(model, model_name, finetune, freeze_stages)
    if not frozen:
        return model
    # timm's freeze works on modules: those whose own parameters are all frozen. Parameters of
    # the root module itself (a ViT's cls_token, pos_embed) are frozen directly.
    modules = []
    for name, module in model.named_modules():
        own = [f"{name}.{k}" for k, _ in module.named_parameters(recurse=False)]
        if name and own and all(k in frozen for k in own):
            modules.append(name)
    freeze(model, modules)
    for name, param in model.named_parameters(recurse=False):
        if name in frozen:
            param.requires_grad_(False)
    return model
