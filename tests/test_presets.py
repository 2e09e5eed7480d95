"""The preset configs in configs/: each parses and validates, the reference presets carry the
reference experiments' settings, and `study run --config` takes each up to the weights check."""

from __future__ import annotations

import pytest

from study import config
from tests.conftest import ROOT

PRESETS = sorted((ROOT / "configs").glob("*.toml"))
REFERENCE = {"tiny_imagenet_mobilevit.toml": "tiny-imagenet", "text_recognition.toml": "text-recognition"}
COMPARISON = {"tiny_imagenet_comparison.toml": "tiny-imagenet", "text_recognition_comparison.toml": "text-recognition"}
LABEL_EFFICIENCY = "imagenet_label_efficiency.toml"  # subset lists, from scratch: checked on its own
REFERENCE_LIKE = [p for p in PRESETS if p.name != LABEL_EFFICIENCY]
BOTH = {"reference_comparison.toml": "tiny-imagenet,text-recognition"}  # one study of both datasets
# The arms of the comparisons: MobileViT three ways against three pretrained baselines.
ARMS = {
    "mobilevit-finetune": ("mobilevit_s", True, "full"),
    "mobilevit-probe": ("mobilevit_s", True, "head"),
    "mobilevit-scratch": ("mobilevit_s", False, "full"),
    "mobilenetv2": ("mobilenetv2_100", True, "full"),
    "resnet18": ("resnet18", True, "full"),
    "vit-tiny": ("vit_tiny_patch16_224", True, "full"),
}


def test_every_preset_is_listed():
    assert sorted(p.name for p in PRESETS) == sorted([*REFERENCE, *COMPARISON, *BOTH, LABEL_EFFICIENCY])


def test_imagenet_label_efficiency_preset_uses_the_published_lists_and_the_comparison_models():
    path = ROOT / "configs" / LABEL_EFFICIENCY
    # The published lists ship with the package: the preset names them and validates as it is.
    cfg = config.load(path)
    assert cfg.subset_lists == ["imagenet-1pct", "imagenet-10pct"]
    assert cfg.data.dataset == "imagenet" and cfg.fractions == [1.0] and cfg.seeds >= 3
    assert [kind for kind, _ in cfg.sizes] == ["fraction", "list", "list"]
    assert {"mobilenetv2_100", "resnet18"} <= set(cfg.models)
    assert any(m.startswith("mobilevit") for m in cfg.models) and any(m.startswith("vit_") for m in cfg.models)
    assert not cfg.train.pretrained  # timm's pretrained weights saw every ImageNet label


@pytest.mark.parametrize("path", REFERENCE_LIKE, ids=lambda p: p.name)
def test_preset_parses_and_validates_with_the_reference_training(path):
    cfg = config.load(path)
    datasets = ",".join(d.data.dataset for d in cfg.datasets) or cfg.data.dataset
    assert datasets == {**REFERENCE, **COMPARISON, **BOTH}[path.name]
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs) == ("adam", 1e-4, 10)
    assert cfg.train.pretrained and cfg.train.finetune == "full" and cfg.train.input_size == "native"
    assert any(m.startswith("mobilevit") for m in cfg.models)
    if path.name in REFERENCE:
        assert cfg.fractions == [1.0] and len(cfg.models) == 1
    else:
        assert len(cfg.fractions) >= 4 and cfg.seeds >= 3
        arms = {a.name: a.resolved(cfg.train) for a in cfg.study_arms}
        assert {n: (cfg.arm(n).model, hp.pretrained, hp.finetune) for n, hp in arms.items()} == ARMS
        assert arms["mobilevit-scratch"].lr > arms["mobilevit-finetune"].lr


@pytest.mark.parametrize("path", REFERENCE_LIKE, ids=lambda p: p.name)
def test_run_takes_the_preset_and_stops_at_missing_weights_before_training(cli, tmp_path, monkeypatch, path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = cli("run", "--config", path, "--out", tmp_path / "o", "--quiet")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "cannot get timm's pretrained weights for 'mobilevit" in line and "HF_HUB_OFFLINE=1" in line
    assert not (tmp_path / "o").exists()
