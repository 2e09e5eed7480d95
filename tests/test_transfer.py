"""Pretrained weights (a filled Hugging Face cache, local .safetensors / .pth files), fine-tuning
modes and input sizes. Every weights file and cache here is written by the test itself."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from study import config
from study.config import SCHEDULE_FREE_LR, StudyConfig, TrainConfig
from study.errors import UserError
from study.models import _skeleton, create_model, input_size_for, interpolation_warning, preflight
from study.plan import study_settings
from study.store import settings_fingerprint
from study.train import TrainData, train_run
from tests.conftest import FAST_MODEL, run_subprocess, write_imagefolder

HUB_ID = "timm/test_resnet.r160_in1k"  # test_resnet's pretrained source in timm's registry


def _source_state(seed: int = 7) -> dict[str, torch.Tensor]:
    """A test_resnet state dict with 1000 ImageNet classes, as a pretrained file holds it."""
    torch.manual_seed(seed)
    return {k: v.clone().contiguous() for k, v in timm.create_model(FAST_MODEL).state_dict().items()}


def _write(state: dict, path, wrap: bool = False):
    if path.suffix == ".safetensors":
        save_file(state, path)
    else:  # a training checkpoint, as DDP writes it: {'state_dict': {'module.<name>': ...}}
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3} if wrap else state, path)
    return path


def _assert_backbone_equals(model, state):
    for name, tensor in model.state_dict().items():
        if name.startswith("fc."):
            continue
        assert torch.equal(tensor, state[name]), name


@pytest.mark.parametrize("suffix, wrap", [(".safetensors", False), (".pth", False), (".pth", True)])
def test_weights_file_loads_backbone_and_gets_a_new_head(tmp_path, suffix, wrap):
    state = _source_state()
    path = _write(state, tmp_path / f"w{suffix}", wrap)
    model = create_model(FAST_MODEL, 3, TrainConfig(weights=[f"{FAST_MODEL}={path}"]))
    _assert_backbone_equals(model, state)
    assert model.fc.weight.shape == (3, state["fc.weight"].shape[1])  # new head for the dataset's 3 classes
    random = create_model(FAST_MODEL, 3)
    assert not torch.equal(random.conv1[0].weight, state["conv1.0.weight"])


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """A Hugging Face cache holding test_resnet's pretrained file, and offline mode on: what a
    researcher copies to a machine without internet."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{HUB_ID.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    state = _source_state(seed=11)
    save_file(state, repo / "snapshots" / commit / "model.safetensors")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub", state


def test_pretrained_weights_come_from_the_filled_hub_cache_offline(hub_cache):
    _, state = hub_cache
    model = create_model(FAST_MODEL, 5, TrainConfig(pretrained=True))
    _assert_backbone_equals(model, state)
    assert model.fc.weight.shape[0] == 5


def test_pretrained_head_is_new_even_when_class_counts_match(hub_cache):
    _, state = hub_cache
    model = create_model(FAST_MODEL, 1000, TrainConfig(pretrained=True))
    _assert_backbone_equals(model, state)
    assert not torch.equal(model.fc.weight, state["fc.weight"])


def test_offline_without_cache_stops_before_any_work_with_one_clear_line(cli, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = cli(
        "run", "--out", tmp_path / "o", "--models", FAST_MODEL, "--pretrained", "--image-size", "16", "--quiet"
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert f"cannot get timm's pretrained weights for '{FAST_MODEL}' ({HUB_ID}): HF_HUB_OFFLINE=1" in line
    assert f"--weights {FAST_MODEL}=FILE" in line and "Traceback" not in err
    assert (
        not (tmp_path / "o" / "study.db").exists() and not (tmp_path / "o" / "cache").exists()
    )  # nothing decoded or trained


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not a safetensors file at all"), "could not be read"),
        (
            lambda p: save_file(
                {k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, p
            ),
            "does not fit model 'test_resnet'",
        ),
        (
            lambda p: save_file({k: v for k, v in _source_state().items() if not k.startswith("layer4")}, p),
            "tensor(s) missing, e.g. layer4",
        ),
    ],
)
def test_unusable_weights_file_is_refused_before_training(cli, tmp_path, make, fragment):
    path = tmp_path / "w.safetensors"
    make(path)
    code, out, err = cli(
        "run",
        "--out",
        tmp_path / "o",
        "--models",
        FAST_MODEL,
        "--weights",
        f"{FAST_MODEL}={path}",
        "--image-size",
        "16",
        "--quiet",
    )
    assert code == 2, err
    (line,) = err.strip().splitlines()
    assert fragment in line and str(path) in line
    assert not (tmp_path / "o" / "study.db").exists()


def _captured_training(tmp_path, hp: TrainConfig):
    """Train test_resnet on a small real image folder and return (model after training, file state)."""
    from study.config import DataConfig
    from study.datasets import load_dataset

    state = _source_state()
    path = _write(state, tmp_path / "w.safetensors")
    hp = dataclasses.replace(
        hp, weights=[f"{FAST_MODEL}={path}"], budget="fixed", epochs=2, min_steps=4, batch_size=8, augment="none"
    ).resolved(FAST_MODEL)
    assert hp.lr == 1e-4  # 'auto' learning rate: fine-tuning, since the model starts from a file
    ds = load_dataset(
        DataConfig(dataset="imagefolder", root=str(write_imagefolder(tmp_path / "d", {"a": 8, "b": 8})), image_size=16),
        tmp_path / "c",
    )
    data = TrainData.from_arrays(np.array(ds.images), ds.labels, ds.num_classes, torch.device("cpu"), ds.hflip)
    built = []

    def factory(name, n):
        built.append(create_model(name, n, hp))
        return built[-1]

    idx = np.arange(len(ds))
    train_run(
        data, idx[::2], idx[1::2], idx[1::2], FAST_MODEL, hp, seed=0, device=torch.device("cpu"), model_factory=factory
    )
    return built[0], state


def test_linear_probe_trains_only_the_head_and_keeps_batchnorm_statistics(tmp_path):
    model, state = _captured_training(tmp_path, TrainConfig(finetune="head"))
    _assert_backbone_equals(model, state)  # weights and BatchNorm running statistics unchanged
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"fc.weight", "fc.bias"}
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # all frozen BN


def test_freezing_the_first_stages_keeps_them_and_trains_the_rest(tmp_path):
    model, state = _captured_training(tmp_path, TrainConfig(freeze_stages=2))
    after = model.state_dict()
    frozen = [n for n in after if n.startswith(("conv1", "bn1", "layer1", "layer2"))]
    assert len(frozen) > 20
    for name in frozen:  # weights and BatchNorm statistics alike
        assert torch.equal(after[name], state[name]), name
    changed = [
        n
        for n in after
        if n.startswith(("layer3", "layer4")) and n.endswith("weight") and not torch.equal(after[n], state[n])
    ]
    assert changed, "the unfrozen stages should train"


@pytest.mark.parametrize("name", ["mobilenetv2_100", "mobilevit_xxs", FAST_MODEL])
def test_every_new_model_starts_at_a_loss_near_ln_classes(name, hub_cache):
    """timm's Google-style init gives MobileNetV2 logits with a standard deviation near 6 for 10
    classes (first loss near 8): the new classifier is drawn small for every model, fresh or
    loaded from weights."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 32, 32), torch.arange(16) % 10
    models = [create_model(name, 10)]
    if name == FAST_MODEL:
        models.append(create_model(name, 10, TrainConfig(pretrained=True)))
    for model in models:
        with torch.no_grad():
            loss = torch.nn.functional.cross_entropy(model.eval()(x), y).item()
        assert abs(loss - math.log(10)) < 0.1, (name, loss)
        assert torch.count_nonzero(model.get_classifier().bias) == 0


def test_too_many_frozen_stages_names_the_model_s_count():
    with pytest.raises(
        UserError, match=r"train.freeze_stages=5 is more than the 4 stages of model 'test_resnet'; use 1 to 4"
    ):
        preflight([FAST_MODEL], TrainConfig(freeze_stages=5), 16)


def test_input_size_native_or_configured():
    assert input_size_for("mobilevit_xxs", "native", 64) == 256  # MobileViT was pretrained at 256
    assert input_size_for(FAST_MODEL, "native", 64) == 160
    assert input_size_for(FAST_MODEL, 0, 64) == 64 and input_size_for(FAST_MODEL, 96, 64) == 96


def test_mobilevit_warns_off_multiples_of_64_only():
    skeleton = _skeleton("mobilevit_xxs")
    message = interpolation_warning(skeleton, "mobilevit_xxs", 224)
    assert (
        "at input 224 px interpolates inside its MobileViT blocks" in message
        and "a multiple of 64, e.g. 192 or 256" in message
    )
    assert interpolation_warning(skeleton, "mobilevit_xxs", 256) is None
    assert interpolation_warning(_skeleton(FAST_MODEL), FAST_MODEL, 224) is None
    warnings = preflight(["mobilevit_xxs", FAST_MODEL], TrainConfig(input_size=224), 32)
    assert len(warnings) == 1 and "mobilevit_xxs" in warnings[0]
    assert preflight(["mobilevit_xxs"], TrainConfig(input_size="native"), 32) == []


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"train.weights": ["test_resnet"]}, "train.weights entry 'test_resnet' is invalid; use MODEL=PATH"),
        ({"train.weights": ["resnet18=a.pth"]}, "names model 'resnet18', which is not in models (test_resnet)"),
        ({"train.finetune": "partial"}, "train.finetune='partial' is unknown; valid: full, head"),
        ({"train.finetune": "head", "train.freeze_stages": 2}, "only applies to train.finetune='full'"),
        ({"train.input_size": "huge"}, "train.input_size='huge' is invalid"),
    ],
)
def test_bad_transfer_settings_are_refused(overrides, fragment):
    with pytest.raises(UserError) as info:
        config.load(None, {"models": FAST_MODEL, **overrides})
    assert fragment in str(info.value)


def test_auto_learning_rate_fine_tunes_models_that_start_from_weights():
    hp = TrainConfig(weights=["a=w.pth"])
    assert hp.resolved("a").lr == 1e-4 and hp.resolved("b").lr == SCHEDULE_FREE_LR  # b trains from scratch
    assert TrainConfig(pretrained=True).resolved("b").lr == 1e-4
    assert TrainConfig(pretrained=True, lr=0.01).resolved("b").lr == 0.01


def test_weights_count_in_the_study_fingerprint_by_content_not_location(tmp_path):
    state = _source_state()
    first = _write(state, tmp_path / "a.safetensors")
    moved = tmp_path / "elsewhere" / "b.safetensors"
    moved.parent.mkdir()
    moved.write_bytes(first.read_bytes())
    other = _write(_source_state(seed=99), tmp_path / "c.safetensors")

    def fingerprint(path) -> str:
        cfg = StudyConfig(
            models=[FAST_MODEL], train=TrainConfig(pretrained=True, weights=[f"{FAST_MODEL}={path}"])
        ).validate()
        return settings_fingerprint(study_settings(cfg, "digest"))

    assert fingerprint(first) == fingerprint(moved)
    assert fingerprint(first) != fingerprint(other)


@pytest.mark.slow
def test_pretrained_study_runs_offline_from_a_filled_cache(hub_cache, tmp_path):
    """`HF_HUB_OFFLINE=1 python -m study run --pretrained` in its own process, as on a cluster
    node without internet: the weights come from the cache, the study finishes."""
    cache, _ = hub_cache
    root = write_imagefolder(tmp_path / "data", {"a": 8, "b": 8})
    proc = run_subprocess(
        "run",
        "--out",
        tmp_path / "o",
        "--dataset",
        "imagefolder",
        "--data-root",
        root,
        "--models",
        FAST_MODEL,
        "--pretrained",
        "--finetune",
        "head",
        "--image-size",
        "16",
        "--budget",
        "fixed",
        "--no-budget-control",
        "--epochs",
        "1",
        "--min-steps",
        "2",
        "--fractions",
        "1",
        "--seeds",
        "1",
        "--jobs",
        "1",
        "--quiet",
        "--no-report",
        env={"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 done, 0 failed" in proc.stdout
