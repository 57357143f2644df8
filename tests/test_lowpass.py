"""Low-pass filters, mask smoothing and time masks (cdc_aug/lowpass.py)."""

import pytest
import torch

from cdc_aug.lowpass import (
    auto_blur_sigma,
    gaussian_blur,
    guided_steps,
    lowpass,
    masked_lowpass,
    stop_fraction,
    time_mask,
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_lowpass_identity_for_n1_and_keeps_constants():
    x = _rand(2, 3, 16, 16)
    assert torch.equal(lowpass(x, 1), x)
    c = torch.full((1, 3, 16, 16), 0.3)
    torch.testing.assert_close(lowpass(c, 4), c)


def test_lowpass_is_linear():
    a, b = _rand(1, 3, 16, 16, seed=1), _rand(1, 3, 16, 16, seed=2)
    torch.testing.assert_close(lowpass(2 * a - 3 * b, 2), 2 * lowpass(a, 2) - 3 * lowpass(b, 2), atol=1e-5, rtol=0)


def test_lowpass_removes_frequencies_above_the_coarse_grid():
    # A checkerboard is pure Nyquist: the antialiased filter flattens it to its mean
    # (plain subsampling would alias it to a constant 0 or 1 instead).
    ii, jj = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    board = ((ii + jj) % 2).float()[None, None]
    out = lowpass(board, 2)
    torch.testing.assert_close(out[..., 4:-4, 4:-4], torch.full_like(out[..., 4:-4, 4:-4], 0.5), atol=1e-5, rtol=0)
    # a smooth ramp passes nearly unchanged
    ramp = (ii.float() / 31)[None, None]
    assert (lowpass(ramp, 4) - ramp)[..., 4:-4, :].abs().max() < 0.02


def test_lowpass_rejects_a_factor_that_does_not_divide():
    with pytest.raises(ValueError, match="does not divide"):
        lowpass(torch.zeros(1, 1, 10, 10), 3)


def test_masked_lowpass_uses_the_inner_filter_on_the_object():
    x = _rand(1, 3, 16, 16)
    ones, zeros = torch.ones(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    torch.testing.assert_close(masked_lowpass(x, 4, 2, ones), lowpass(x, 4))
    torch.testing.assert_close(masked_lowpass(x, 4, 2, zeros), lowpass(x, 2))


def test_gaussian_blur_keeps_constants_and_mass():
    c = torch.full((1, 1, 8, 8), 0.7)
    torch.testing.assert_close(gaussian_blur(c, 2.0), c)
    m = torch.zeros(1, 1, 32, 32)
    m[..., 12:20, 12:20] = 1
    assert torch.equal(gaussian_blur(m, 0), m)
    b = gaussian_blur(m, 1.5)
    assert abs(b.sum().item() - m.sum().item()) < 1e-3  # away from the border, no mass lost
    assert 0 < b[0, 0, 11, 16] < 1 and b[0, 0, 16, 16] > 0.97


def test_auto_blur_follows_the_largest_factor():
    assert auto_blur_sigma(1, 1) == 0.5
    assert auto_blur_sigma(2, 8) == 4.0


@pytest.mark.parametrize("t,k,expected", [(0.0, 50, 0), (1.0, 50, 50), (0.5, 50, 25), (0.25, 10, 2), (0.05, 10, 0)])
def test_guided_steps_rounds_half_down(t, k, expected):
    assert guided_steps(t, k) == expected


def test_time_mask_guides_each_region_for_its_fraction_of_the_steps():
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :, :4] = 1
    stop = stop_fraction(mask, t_in=0.6, t_out=0.2)
    steps = 20
    count = sum(time_mask(stop, k, steps, sigma=0) for k in range(steps))
    assert torch.all(count[..., :4] == 12) and torch.all(count[..., 4:] == 4)


def test_time_mask_is_smoothed_only_at_the_switch():
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:12, 4:12] = 1
    stop = stop_fraction(mask, 1.0, 0.0)
    mt = time_mask(stop, 3, 10, sigma=1.0)
    assert mt[0, 0, 8, 8] > 0.99 and mt[0, 0, 0, 0] < 1e-3
    assert 0.2 < mt[0, 0, 8, 4] < 0.8
    assert torch.equal(time_mask(torch.ones(1, 1, 4, 4), 0, 10, sigma=1.0), torch.ones(1, 1, 4, 4))
