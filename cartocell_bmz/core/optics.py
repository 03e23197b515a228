"""A confocal acquisition model: a noise-free membrane signal in, a camera image out.

CartoCell's data come from two acquisitions (González-Marcos et al., the CartoCell
paper): the 19 + 2 cysts of ``train_M1`` / ``validation`` were imaged at high
resolution (fine z-step, high magnification, slow scanning) and brought down to the
voxel size of the rest; the 293 cysts of ``train_M2`` and the 60 of ``test`` were
imaged directly at low resolution, many per session, so they are dimmer, noisier,
blurrier in z and less evenly stained.  :class:`Acquisition` holds the parameters of
one such acquisition; :data:`HIGH_RESOLUTION` and :data:`LOW_RESOLUTION` are the two;
:func:`acquire` images a signal with them.

The model, in the order it is applied to a signal ``s`` on a grid of voxel size
``spacing``:

1. staining: ``s * k``, ``k`` log-normal per cyst (uneven staining between cysts);
2. optics: Gaussian point-spread function of sigma :attr:`Acquisition.psf_sigma` (um);
3. depth attenuation: ``exp(-depth / attenuation_length)``, depth measured in z from
   the first slice (the objective side);
4. haze: out-of-focus light, the signal blurred by :attr:`Acquisition.haze_sigma`
   times :attr:`Acquisition.haze`, plus a flat background;
5. detector: Poisson photon counts scaled so the brightest voxel of a cyst with
   ``k = 1`` receives :attr:`Acquisition.peak_photons`, Gaussian read noise, gain and
   12-bit clipping.

Pure numpy/scipy; deterministic for a given generator state.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

#: Largest value of the 12-bit detector.
DETECTOR_MAX = 4095


@dataclass(frozen=True)
class Acquisition:
    """Parameters of one confocal acquisition (lengths in micrometres).

    Attributes
    ----------
    name : str
        Short name written to ``dataset.json``.
    oversampling : tuple of 3 ints
        Acquisition grid relative to the dataset's voxel size ``(z, y, x)``: the stack
        is imaged ``oversampling`` times finer and then averaged down in blocks.
        ``(1, 1, 1)`` is a direct acquisition at the dataset's voxel size.  Reason: the
        paper's phase-1 cysts were taken at high resolution and reduced to the
        low-resolution voxel size of the others.
    psf_sigma : tuple of 3 floats
        Standard deviation ``(z, y, x)`` of the Gaussian PSF, from the objective by
        :func:`confocal_psf_sigma` (FWHM formulas of Cole et al., Nat. Protoc. 2011,
        converted with FWHM = 2.355 sigma).
    peak_photons : tuple of 2 floats
        Range (uniform) of the photon count of the brightest membrane voxel.  Reason:
        line averaging and slow scanning collect several hundred photons; a fast scan
        of many cysts tens (photon counting confocals, Pawley ch. 2).
    background_photons : tuple of 2 floats
        Range of the flat background (dark counts, medium autofluorescence).
    read_noise : float
        Standard deviation of the Gaussian read / amplifier noise, in photons.
    gain : float
        Grey values per photon before 12-bit clipping.
    attenuation_length : float or None
        Depth over which the signal falls to ``1/e`` (scattering and absorption in the
        cyst and its Matrigel); ``None``: no attenuation.  Reason: a 50-100 um cyst in
        gel loses a large part of its signal at the far side when imaged with a dry
        objective; an oil objective with a short stack loses little.
    haze : float
        Out-of-focus light as a fraction of the blurred signal.  Reason: an open
        pinhole (fast, low-resolution imaging) lets in light from other planes.
    haze_sigma : float
        Width of the out-of-focus blur.
    staining_spread : float
        Standard deviation of ``log k``, the cyst's staining factor.  Reason: cysts of
        different days and wells take the membrane dye unevenly.
    """

    name: str
    oversampling: tuple[int, int, int] = (1, 1, 1)
    psf_sigma: tuple[float, float, float] = (0.7, 0.25, 0.25)
    peak_photons: tuple[float, float] = (250.0, 450.0)
    background_photons: tuple[float, float] = (8.0, 20.0)
    read_noise: float = 3.0
    gain: float = 8.0
    attenuation_length: float | None = None
    haze: float = 0.0
    haze_sigma: float = 4.0
    staining_spread: float = 0.0

    def __post_init__(self) -> None:
        if len(self.oversampling) != 3 or min(self.oversampling) < 1:
            raise ValueError(f"oversampling must be 3 integers >= 1, got {self.oversampling}")
        if len(self.psf_sigma) != 3 or min(self.psf_sigma) < 0:
            raise ValueError(f"psf_sigma must be 3 sizes >= 0 (um), got {self.psf_sigma}")
        if min(self.peak_photons) <= 0 or self.peak_photons[0] > self.peak_photons[1]:
            raise ValueError(f"peak_photons must be a range of positive counts, got {self.peak_photons}")
        if self.attenuation_length is not None and self.attenuation_length <= 0:
            raise ValueError(f"attenuation_length must be positive or None, got {self.attenuation_length}")

    def as_dict(self) -> dict[str, Any]:
        """The parameters as plain JSON values."""
        return asdict(self)


#: FWHM coefficients ``(lateral, axial)`` of Cole, Jinadasa & Brown, "Measuring and
#: interpreting point spread functions", Nat. Protoc. 6, 1929 (2011): lateral
#: ``c_l * wavelength / NA``, axial ``c_a * wavelength / (n - sqrt(n**2 - NA**2))``.
#: ``"closed"``: a confocal pinhole well below one Airy unit; ``"open"``: a pinhole
#: opened for speed and signal, which tends to the widefield values.
PSF_COEFFICIENTS: dict[str, tuple[float, float]] = {"closed": (0.37, 0.64), "open": (0.51, 0.88)}
#: FWHM of a Gaussian in units of its standard deviation, ``2 sqrt(2 ln 2)``.
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


def confocal_psf_sigma(
    wavelength: float, na: float, immersion_index: float, pinhole: str = "closed",
    sample_index: float | None = None,
) -> tuple[float, float, float]:
    """Gaussian sigma ``(z, y, x)`` in um of a confocal point-spread function.

    Parameters
    ----------
    wavelength : float
        Emission wavelength in um.
    na : float
        Numerical aperture of the objective (below ``immersion_index``).
    immersion_index : float
        Refractive index of the immersion medium (1.0 air, 1.518 oil).
    pinhole : {"closed", "open"}
        See :data:`PSF_COEFFICIENTS`.
    sample_index : float, optional
        Refractive index of the sample when it differs from the immersion's: the axial
        extent is stretched by ``sample_index / immersion_index`` (the paraxial focal
        shift of an index mismatch, e.g. a dry objective focusing into a water-like gel).

    Returns
    -------
    tuple of 3 floats

    Examples
    --------
    >>> [round(s, 3) for s in confocal_psf_sigma(0.52, 1.4, 1.518)]
    [0.152, 0.058, 0.058]
    """
    if pinhole not in PSF_COEFFICIENTS:
        raise ValueError(f"pinhole must be one of {sorted(PSF_COEFFICIENTS)}, got {pinhole!r}")
    if not 0 < na < immersion_index:
        raise ValueError(f"na must be in (0, immersion_index={immersion_index}), got {na}")
    c_lateral, c_axial = PSF_COEFFICIENTS[pinhole]
    lateral = c_lateral * wavelength / na
    axial = c_axial * wavelength / (immersion_index - math.sqrt(immersion_index ** 2 - na ** 2))
    if sample_index is not None:
        axial *= sample_index / immersion_index
    z, xy = axial / FWHM_PER_SIGMA, lateral / FWHM_PER_SIGMA
    return (z, xy, xy)


#: ``train_M1`` and ``validation``: fine z-step (3x), small PSF (oil objective NA 1.4,
#: closed pinhole, 520 nm), bright, little haze.
HIGH_RESOLUTION = Acquisition(
    name="high_resolution", oversampling=(3, 2, 2), psf_sigma=confocal_psf_sigma(0.52, 1.4, 1.518, "closed"),
    peak_photons=(600.0, 900.0), background_photons=(4.0, 8.0), read_noise=2.0, gain=4.0,
    attenuation_length=300.0, haze=0.02, haze_sigma=4.0, staining_spread=0.1,
)
#: ``train_M2`` and ``test``: direct at the coarse voxel size, PSF long in z (dry objective
#: NA 0.8 into a water-like gel, open pinhole, 520 nm), dim, hazy, attenuated with depth,
#: unevenly stained.
LOW_RESOLUTION = Acquisition(
    name="low_resolution", oversampling=(1, 1, 1),
    psf_sigma=confocal_psf_sigma(0.52, 0.8, 1.0, "open", sample_index=1.33),
    peak_photons=(40.0, 120.0), background_photons=(8.0, 20.0), read_noise=3.0, gain=16.0,
    attenuation_length=60.0, haze=0.25, haze_sigma=4.0, staining_spread=0.35,
)


def acquire(
    signal: np.ndarray,
    spacing: Sequence[float],
    params: Acquisition,
    rng: np.random.Generator,
) -> np.ndarray:
    """Image a noise-free membrane signal with one acquisition.

    Parameters
    ----------
    signal : numpy.ndarray
        Non-negative ``(Z, Y, X)`` signal (membrane brightness), unblurred, on the
        acquisition grid.
    spacing : sequence of 3 floats
        Voxel size ``(z, y, x)`` of ``signal`` in micrometres.
    params : Acquisition
        The acquisition.
    rng : numpy.random.Generator
        Source of the staining factor, photon range and noise.

    Returns
    -------
    numpy.ndarray
        ``float32`` grey values in ``[0, 4095]`` (not rounded: a caller that averages
        down in blocks rounds afterwards, see :func:`to_detector`).

    Examples
    --------
    >>> s = np.zeros((8, 16, 16)); s[4, 8, 8] = 1.0
    >>> img = acquire(s, (1.0, 0.5, 0.5), LOW_RESOLUTION, np.random.default_rng(0))
    >>> img.shape, img.dtype.name
    ((8, 16, 16), 'float32')
    """
    from scipy import ndimage as ndi

    signal = np.clip(np.asarray(signal, np.float64), 0, None)
    spacing = np.asarray(spacing, float)
    stain = float(np.exp(rng.normal(0.0, params.staining_spread))) if params.staining_spread else 1.0
    peak = rng.uniform(*params.peak_photons)
    background = rng.uniform(*params.background_photons)
    blurred = ndi.gaussian_filter(signal, sigma=tuple(np.asarray(params.psf_sigma) / spacing))
    top = float(blurred.max())
    expected = blurred / max(top, 1e-12) * peak * stain
    if params.attenuation_length is not None:
        depth = (np.arange(signal.shape[0]) + 0.5) * spacing[0]
        expected *= np.exp(-depth / params.attenuation_length)[:, None, None]
    if params.haze:
        expected += params.haze * ndi.gaussian_filter(expected, sigma=tuple(params.haze_sigma / spacing))
    photons = rng.poisson(expected + background).astype(np.float64)
    photons += rng.normal(scale=params.read_noise, size=signal.shape)
    return np.clip(photons * params.gain, 0, DETECTOR_MAX).astype(np.float32)


def to_detector(image: np.ndarray, factor: Sequence[int] = (1, 1, 1)) -> np.ndarray:
    """Average ``image`` down in blocks of ``factor`` voxels and round to ``uint16``.

    Examples
    --------
    >>> to_detector(np.full((4, 4, 4), 2.6, np.float32), (2, 2, 2)).shape
    (2, 2, 2)
    """
    fz, fy, fx = (int(f) for f in factor)
    z, y, x = image.shape
    if z % fz or y % fy or x % fx:
        raise ValueError(f"image shape {image.shape} is not a multiple of {tuple(factor)}")
    if (fz, fy, fx) != (1, 1, 1):
        image = image.reshape(z // fz, fz, y // fy, fy, x // fx, fx).mean(axis=(1, 3, 5))
    return np.clip(np.round(image), 0, DETECTOR_MAX).astype(np.uint16)
