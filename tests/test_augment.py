import pytest
import torch

from study.augment import POLICIES, BatchAugment, to_model_input


def _batch(n=6, size=16):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, size, size, 3), generator=g, dtype=torch.uint8)


@pytest.mark.parametrize("policy", POLICIES)
def test_shapes_dtype_and_range_are_kept(policy):
    x = _batch().permute(0, 3, 1, 2).float() / 255
    out = BatchAugment(policy, 1.0)(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("policy", [p for p in POLICIES if p != "none"])
def test_augmentation_changes_images_and_is_deterministic_under_a_seed(policy):
    x = _batch().permute(0, 3, 1, 2).float() / 255
    aug = BatchAugment(policy, 1.0)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, x)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("aug", [BatchAugment("none", 1.0), BatchAugment("strong", 0.0)])
def test_off_leaves_images_unchanged(aug):
    x = _batch().permute(0, 3, 1, 2).float() / 255
    assert torch.equal(aug(x, torch.Generator().manual_seed(0)), x)


def test_flip_only_when_allowed():
    x = torch.zeros(64, 1, 8, 8)
    x[:, :, :, :2] = 1  # bright left edge
    flipped = BatchAugment("light", 0.0001, hflip=True)(x, torch.Generator().manual_seed(0))
    kept = BatchAugment("light", 0.0001, hflip=False)(x, torch.Generator().manual_seed(0))
    right_bright = lambda t: t[:, 0, :, -2:].mean(dim=(1, 2)) > 0.5  # noqa: E731
    assert right_bright(flipped).any() and not right_bright(kept).any()


def test_model_input_is_resized_and_normalised():
    x = _batch(size=16)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    out = to_model_input(x, 32, mean, std)
    assert out.shape == (6, 3, 32, 32)
    same = to_model_input(x, 16, mean, std)
    expected = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(same, expected, atol=1e-6)


@pytest.mark.parametrize("policy", ["light", "standard", "strong", "trivial"])
def test_model_input_path_augments_under_a_seed_and_keeps_shape_dtype_and_range(policy):
    """The path every training batch takes: uint8 NHWC in, normalised float NCHW out."""
    x = _batch(n=8, size=16)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    aug = BatchAugment(policy, 1.0)
    a = to_model_input(x, 24, mean, std, aug, torch.Generator().manual_seed(7))
    b = to_model_input(x, 24, mean, std, aug, torch.Generator().manual_seed(7))
    c = to_model_input(x, 24, mean, std, aug, torch.Generator().manual_seed(8))
    plain = to_model_input(x, 24, mean, std)
    assert a.shape == (8, 3, 24, 24) and a.dtype == torch.float32
    # [0, 1] before normalisation -> [(0 - 0.5) / 0.25, (1 - 0.5) / 0.25]
    assert a.min() >= -2 - 1e-6 and a.max() <= 2 + 1e-6
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, plain)


@pytest.mark.parametrize("aug", [None, BatchAugment("none", 1.0), BatchAugment("standard", 0.0)])
def test_model_input_path_with_augmentation_off_is_the_plain_conversion(aug):
    x = _batch(n=4, size=16)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.25, 0.25])
    out = to_model_input(x, 16, mean, std, aug, torch.Generator().manual_seed(0))
    assert torch.allclose(out, (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25, atol=1e-6)


@pytest.mark.parametrize("augment", [None, BatchAugment("standard", 1.0)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_model_input_layout_is_the_one_asked_for_whatever_the_path(augment, channels_last):
    """The uint8 batch arrives NHWC; the model must get the layout chosen for it, not one left
    over from the conversion (it decides which kernels run, and how fast)."""
    mean, std = torch.zeros(3), torch.ones(3)
    out = to_model_input(
        _batch(n=2, size=16), 16, mean, std, augment, torch.Generator().manual_seed(0), channels_last=channels_last
    )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    assert out.is_contiguous(memory_format=fmt)


def test_affine_grid_matches_torch_for_any_shape():
    import torch.nn.functional as F

    from study.augment import affine_grid

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(affine_grid(theta, 7, 9), F.affine_grid(theta, [5, 3, 7, 9], align_corners=False), atol=1e-6)
