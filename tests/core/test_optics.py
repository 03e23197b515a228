"""Tests of cartocell_bmz.core.optics: the acquisition model, on cases whose answer is known."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest

from cartocell_bmz.core.optics import HIGH_RESOLUTION, LOW_RESOLUTION, Acquisition, acquire, to_detector
from cartocell_bmz.core.phantoms import make_cyst

#: Almost noise-free, unclipped, no staining, haze or attenuation: the optics alone.
CLEAN = Acquisition(name="clean", peak_photons=(1e6, 1e6), background_photons=(0.0, 0.0), read_noise=0.0, gain=1e-3)


def _width(profile: np.ndarray, step: float) -> float:
    """Standard deviation (um) of a 1D intensity profile."""
    x = np.arange(profile.size) * step
    w = profile / profile.sum()
    mean = (w * x).sum()
    return float(np.sqrt((w * (x - mean) ** 2).sum()))


def test_psf_elongated_in_z_blurs_z_more_than_x():
    spacing = (0.25, 0.25, 0.25)  # isotropic grid: only the PSF differs between axes
    point = np.zeros((41, 41, 41))
    point[20, 20, 20] = 1.0
    img = acquire(point, spacing, replace(CLEAN, psf_sigma=LOW_RESOLUTION.psf_sigma), np.random.default_rng(0))
    wz = _width(img[:, 20, 20].astype(float), 0.25)
    wx = _width(img[20, 20, :].astype(float), 0.25)
    assert wz == pytest.approx(LOW_RESOLUTION.psf_sigma[0], rel=0.1)
    assert wx == pytest.approx(LOW_RESOLUTION.psf_sigma[2], rel=0.2)
    assert wz > 3 * wx
    # the high-resolution PSF is smaller on both axes
    hi = acquire(point, spacing, replace(CLEAN, psf_sigma=HIGH_RESOLUTION.psf_sigma), np.random.default_rng(0))
    assert _width(hi[:, 20, 20].astype(float), 0.25) < wz / 2


def _snr(peak: float) -> float:
    flat = np.ones((12, 40, 40))
    params = replace(CLEAN, peak_photons=(peak, peak), background_photons=(0.0, 0.0), gain=1.0)
    img = acquire(flat, (1.0, 0.5, 0.5), params, np.random.default_rng(1))[3:-3, 8:-8, 8:-8]
    return float(img.mean() / img.std())


def test_fewer_photons_lower_the_snr_as_poisson_noise_does():
    low, high = _snr(40.0), _snr(640.0)
    assert high > 3 * low  # Poisson: SNR ~ sqrt(photons), 16x the photons -> 4x the SNR
    assert low == pytest.approx(np.sqrt(40.0), rel=0.15)


def test_attenuation_decreases_intensity_with_depth():
    flat = np.ones((40, 24, 24))
    params = replace(CLEAN, attenuation_length=20.0, gain=1e-3, psf_sigma=(0.0, 0.0, 0.0))
    img = acquire(flat, (1.0, 0.5, 0.5), params, np.random.default_rng(2)).astype(float)
    means = img.mean(axis=(1, 2))
    assert np.all(np.diff(means) < 0)
    assert means[-1] / means[0] == pytest.approx(np.exp(-39.0 / 20.0), rel=0.02)


def test_same_seed_same_bytes_and_acquisitions_differ():
    def digest(acq, seed):
        c = make_cyst((12, 32, 32), (1.0, 0.5, 0.5), stage="day7", acquisition=acq, seed=seed)
        return hashlib.sha256(c.raw.tobytes() + c.labels.tobytes()).hexdigest(), c

    for acq in (HIGH_RESOLUTION, LOW_RESOLUTION):
        (h1, c1), (h2, _) = digest(acq, 5), digest(acq, 5)
        assert h1 == h2 and digest(acq, 6)[0] != h1
        assert c1.raw.dtype == np.uint16 and c1.raw.shape == c1.labels.shape == (12, 32, 32)
        assert c1.labels.max() > 4
    # low-resolution acquisitions are dimmer and noisier than the averaged-down high-resolution ones
    hi = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day10", acquisition=HIGH_RESOLUTION, seed=3)
    lo = make_cyst((16, 48, 48), (1.0, 0.5, 0.5), stage="day10", acquisition=LOW_RESOLUTION, seed=3)

    def contrast(c):
        r = c.raw.astype(float)
        return (r[c.labels > 0].mean() - r[c.labels == 0].mean()) / r[c.labels == 0].std()

    assert contrast(hi) > contrast(lo)


def test_to_detector_averages_blocks_and_rejects_bad_parameters():
    img = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    assert to_detector(img, (2, 2, 2)).tolist() == [[[4]]]  # mean 3.5 rounds to even 4
    with pytest.raises(ValueError, match="multiple"):
        to_detector(img, (3, 1, 1))
    with pytest.raises(ValueError, match="peak_photons"):
        Acquisition(name="bad", peak_photons=(10.0, 1.0))
    with pytest.raises(ValueError, match="attenuation_length"):
        Acquisition(name="bad", attenuation_length=0.0)


def test_confocal_psf_sigma_follows_cole_2011():
    from cartocell_bmz.core.optics import FWHM_PER_SIGMA, confocal_psf_sigma

    # dry NA 0.8, open pinhole, 520 nm: lateral FWHM 0.51*0.52/0.8 = 0.3315 um,
    # axial 0.88*0.52/(1 - sqrt(1 - 0.64)) = 1.144 um, stretched 1.33x by a water-like sample
    z, y, x = confocal_psf_sigma(0.52, 0.8, 1.0, "open", sample_index=1.33)
    assert y == x == pytest.approx(0.3315 / FWHM_PER_SIGMA, rel=1e-3)
    assert z == pytest.approx(1.144 * 1.33 / FWHM_PER_SIGMA, rel=1e-3)
    assert FWHM_PER_SIGMA == pytest.approx(2.3548, rel=1e-4)
    assert LOW_RESOLUTION.psf_sigma == (z, y, x)
    closed = confocal_psf_sigma(0.52, 0.8, 1.0, "closed")
    assert closed[0] < z and closed[1] < y  # a closed pinhole sharpens both axes
    with pytest.raises(ValueError, match="pinhole"):
        confocal_psf_sigma(0.52, 0.8, 1.0, "half")
    with pytest.raises(ValueError, match="na must be"):
        confocal_psf_sigma(0.52, 1.2, 1.0)
