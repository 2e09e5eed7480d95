"""The preset configs in configs/: each parses and validates, the reference presets carry the
reference experiments' settings, and `study run --config` takes each up to the weights check."""

from __future__ import annotations

import pytest

from study import config
from tests.conftest import ROOT

PRESETS = sorted((ROOT / "configs").glob("*.toml"))
REFERENCE = {"tiny_imagenet_mobilevit.toml": "tiny-imagenet", "text_recognition.toml": "text-recognition"}
COMPARISON = {"tiny_imagenet_comparison.toml": "tiny-imagenet", "text_recognition_comparison.toml": "text-recognition"}


def test_every_preset_is_listed():
    assert sorted(p.name for p in PRESETS) == sorted([*REFERENCE, *COMPARISON])


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_parses_and_validates_with_the_reference_training(path):
    cfg = config.load(path)
    assert cfg.data.dataset == {**REFERENCE, **COMPARISON}[path.name]
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.epochs) == ("adam", 1e-4, 10)
    assert cfg.train.pretrained and cfg.train.finetune == "full" and cfg.train.input_size == "native"
    assert any(m.startswith("mobilevit") for m in cfg.models)
    if path.name in REFERENCE:
        assert cfg.fractions == [1.0] and len(cfg.models) == 1
    else:
        assert len(cfg.models) >= 3 and len(cfg.fractions) >= 4 and cfg.seeds >= 3


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_run_takes_the_preset_and_stops_at_missing_weights_before_training(cli, tmp_path, monkeypatch, path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = cli("run", "--config", path, "--out", tmp_path / "o", "--quiet")
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "cannot get timm's pretrained weights for 'mobilevit" in line and "HF_HUB_OFFLINE=1" in line
    assert not (tmp_path / "o").exists()
