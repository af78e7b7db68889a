"""Synthetic H&E-like tiles with a known lesion region, and an optional ink pen-mark artifact.

A tile is painted in stain space and turned into RGB with the Beer-Lambert law, the way a
bright-field scanner sees a stained slide (Ruifrok & Johnston 2001):

    OD(p) = h(p) * v_H + e(p) * v_E,        RGB(p) = I0 * exp(-OD(p))

with ``h``/``e`` the hematoxylin/eosin concentrations and ``v_H``/``v_E`` the stain vectors
(jittered per tile, like HED colour augmentation, Tellez et al. 2018). Eosin forms a pink stroma
with wavy collagen fibres and some white gaps; hematoxylin forms purple nuclei, drawn as ellipses
with irregular (low-order Fourier) borders.

A ``tumor`` tile holds one lesion: a cluster of enlarged, irregular, darker nuclei whose region
(the union of the lesion nuclei, dilated and hole-filled: what a pathologist would outline) is
the ground-truth mask. Lesion strength varies from obvious to subtle, and ``normal`` tiles carry
hard negatives (a few isolated enlarged nuclei, clusters of small dark lymphocytes), so a small
CNN does not reach 100 %. Scale, stain, blur and noise vary per tile.

All lengths are given for a 64-pixel tile and scaled by ``size / 64``. Every draw comes from the
``numpy.random.Generator`` passed in, so a seed fixes the tile exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .he_nuclei import Nuclei, free_points, make_nuclei, paint_nuclei, poisson_points, stromal_nuclei

# Optical-density stain vectors (R, G, B): the reference H&E matrix of Macenko et al. (2009), as used
# for stain normalisation; pinker eosin than the Ruifrok & Johnston vectors.
_V_HEMATOXYLIN = np.array([0.5626, 0.7201, 0.4062])
_V_EOSIN = np.array([0.2159, 0.8012, 0.5581])

# Ink transmittance per channel (what fraction of R, G, B light a full-strength stroke lets through).
_INKS = {
    "blue": np.array([0.22, 0.40, 0.85]),
    "green": np.array([0.30, 0.72, 0.42]),
    "black": np.array([0.16, 0.16, 0.19]),
}


@dataclass(frozen=True)
class HETile:
    """One rendered tile: ``image`` uint8 ``[S,S,3]``, ``lesion`` and ``artifact`` bool ``[S,S]``."""

    image: np.ndarray
    lesion: np.ndarray
    artifact: np.ndarray


def render_he_tile(rng: np.random.Generator, size: int = 64, tumor: bool = False,
                   pen_rng: np.random.Generator | None = None, look: int | None = None,
                   look_rng: np.random.Generator | None = None) -> HETile:
    """Render one H&E-like tile; with ``pen_rng`` also draw an ink pen mark outside the lesion;
    with ``look`` (0 or 1, see :data:`LOOKS`) tint the tissue around the lesion.

    The pen mark uses only ``pen_rng`` and the look only ``look_rng`` (its strength jitter), so
    the same ``rng`` state gives the same tissue with or without them (the biased data sets are
    the plain one plus marks or looks, controlled pairs).
    """
    if size < 16:
        raise ValueError(f"tile size must be at least 16 pixels, got {size}")
    u = size / 64.0
    scale = rng.uniform(0.8, 1.25)  # magnification jitter: all nuclear sizes scale together
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)

    lesion = np.zeros((size, size), dtype=bool)
    if tumor:
        lesion, lesion_nuclei = _lesion(rng, size, u, scale)
    eosin, gaps, fibre_angle = _stroma(rng, size, u, scale, yy, xx, keep=lesion)
    hema = np.full((size, size), rng.uniform(0.02, 0.06))
    occupied = gaps | lesion  # where no further nucleus centre may go
    if tumor:
        # Tumour cells are packed: the fibrous stroma under the lesion is replaced by paler cytoplasm.
        soft = ndimage.gaussian_filter(lesion.astype(float), 1.5 * u)
        eosin = eosin * (1 - 0.35 * soft) + 0.35 * soft * np.median(eosin)
        paint_nuclei(rng, hema, eosin, lesion_nuclei, u)

    for group in _distractors(rng, size, u, scale, occupied):
        paint_nuclei(rng, hema, eosin, group, u)
    paint_nuclei(rng, hema, eosin, stromal_nuclei(rng, size, u, scale, occupied, fibre_angle), u)

    rgb = _stains_to_rgb(rng, hema, eosin)
    artifact = np.zeros((size, size), dtype=bool)
    if pen_rng is not None:
        rgb, artifact = _pen_mark(pen_rng, rgb, lesion, u)
    if look is not None:
        rgb = _context_look(look_rng if look_rng is not None else np.random.default_rng(0), rgb, lesion, look, u)
    rgb = _acquisition(rng, rgb, u)
    image = np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)
    return HETile(image=image, lesion=lesion, artifact=artifact)


# --------------------------------------------------------------------------- stroma


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise (periodic), standardised to mean 0 and std 1.

    Filtered in the Fourier domain, ``F^-1[F[w] * exp(-2 pi^2 sigma^2 |f|^2)]``: the same as
    ``ndimage.gaussian_filter(w, sigma, mode="wrap")`` without its cost for large sigma.
    """
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    gain = np.exp(-2 * np.pi**2 * sigma**2 * (fy**2 + fx**2))
    f = np.fft.irfft2(np.fft.rfft2(rng.standard_normal((size, size))) * gain, s=(size, size))
    return (f - f.mean()) / (f.std() + 1e-12)


def _stroma(rng: np.random.Generator, size: int, u: float, scale: float, yy: np.ndarray,
            xx: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Eosin concentration of the stroma (fibres + patchiness), the white gaps, the fibre angle.

    No gap opens inside ``keep`` (the lesion), which is solid tissue.
    """
    angle = rng.uniform(0, np.pi)
    fibres = np.zeros((size, size))
    for family in range(2):  # two crossing families of wavy, broken collagen fibres
        a = angle + family * rng.uniform(0.4, 1.2)
        period = rng.uniform(3.5, 7.0) * u * scale
        warp = _smooth_noise(rng, size, 6 * u) * rng.uniform(1.5, 4.0)
        phase = 2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period + warp
        presence = np.clip(0.6 + 0.6 * _smooth_noise(rng, size, 3 * u), 0, 1)
        fibres = np.maximum(fibres, presence * (0.5 + 0.5 * np.cos(phase)) ** rng.uniform(3.0, 8.0) * (1 - 0.5 * family))
    patchy = _smooth_noise(rng, size, 5 * u)
    grain = ndimage.gaussian_filter(rng.standard_normal((size, size)), 0.7 * u)
    e0 = rng.uniform(0.45, 0.85)
    eosin = e0 * (0.55 + 0.6 * fibres) * (1 + 0.18 * patchy) * (1 + 0.3 * grain)

    gaps = np.zeros((size, size), dtype=bool)
    if rng.random() < 0.55:  # lumen / loose tissue / tears: white gaps of 3-18 % of the tile
        field = _smooth_noise(rng, size, rng.uniform(4, 8) * u)
        gaps = field > np.quantile(field, 1 - rng.uniform(0.03, 0.18))
        if keep.any():
            gaps &= ~ndimage.binary_dilation(keep, iterations=max(1, int(round(2 * u))))
        soft = np.clip(ndimage.gaussian_filter(gaps.astype(float), 0.8 * u), 0, 1)
        eosin = eosin * (1 - 0.92 * soft)
    return np.clip(eosin, 0, None), gaps, angle


# --------------------------------------------------------------------------- nuclei


def _blob(rng: np.random.Generator, size: int, radius: float, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """An irregular blob (centre inside the tile, ``margin`` from the edges): its mask and centre."""
    centre = rng.uniform(margin, size - margin, size=2)
    yy, xx = np.mgrid[0:size, 0:size].astype(float)
    ang = np.arctan2(yy - centre[0], xx - centre[1])
    rad = radius * (1 + sum(rng.normal(0, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3)))
    return np.hypot(yy - centre[0], xx - centre[1]) <= rad, centre


def _lesion(rng: np.random.Generator, size: int, u: float, scale: float) -> tuple[np.ndarray, Nuclei]:
    """The tumour lesion: its outline mask and its nuclei.

    ``strength ~ Beta(1.8, 1.3)`` in [0,1] sets size, nuclear enlargement (1.4-2.1x a normal
    nucleus), pleomorphism, irregularity and darkness together; at the low end a lesion is four
    or five slightly enlarged nuclei, close to the hard negatives of ``_distractors``. The mask is
    the union of the lesion nuclei (as plain ellipses) dilated by ``0.6 r + 1`` px, closed and
    hole-filled: about 5-30 % of the tile (median 17 %).
    """
    strength = rng.beta(1.8, 1.3)
    r_nuc = 2.3 * u * scale * (1.4 + 0.7 * strength)  # normal round nuclei have 2.3
    region_r = (7.0 + 7.0 * strength + rng.uniform(-1, 1.5)) * u * max(scale, 0.9)
    region, _ = _blob(rng, size, region_r, margin=0.8 * region_r)
    spacing = 2 * r_nuc * rng.uniform(1.05, 1.35)
    cand = np.argwhere(region).astype(float)
    cand = cand[rng.permutation(len(cand))] + rng.uniform(0, 1, size=cand.shape)
    pts = poisson_points(rng, cand, spacing, 30)
    if len(pts) < 4:  # a lesion is a cluster: never fewer than four nuclei
        pts = poisson_points(rng, np.vstack([pts, cand]), 0.7 * spacing, 4)
    radii = r_nuc * rng.uniform(1 - 0.3 * strength - 0.08, 1 + 0.3 * strength + 0.08, size=len(pts))
    nuc = make_nuclei(rng, pts, radii, (1.0, 1.3 + 0.7 * strength), (0.1 + 0.1 * strength, 0.18 + 0.2 * strength),
                       (1.1 + 0.35 * strength, 1.35 + 0.5 * strength), (0.1, 0.3 + 0.5 * strength))

    scratch = np.zeros((size, size))
    core = paint_nuclei(np.random.default_rng(0), scratch, scratch.copy(), _deterministic_shape(nuc), u) >= 0.5
    outline = ndimage.distance_transform_edt(~core) <= 0.6 * r_nuc + 1.0 * u
    outline = ndimage.binary_closing(outline, structure=np.ones((3, 3)), iterations=max(1, int(round(2 * u))))
    outline = ndimage.binary_fill_holes(outline)
    return outline, nuc


def _deterministic_shape(nuc: Nuclei) -> Nuclei:
    """The same nuclei as plain ellipses (no border noise): enough to outline the lesion."""
    z = np.zeros_like(nuc.a)
    return Nuclei(nuc.cy, nuc.cx, nuc.a, nuc.b, nuc.theta, z, np.ones_like(z), z)


def _distractors(rng: np.random.Generator, size: int, u: float, scale: float, occupied: np.ndarray) -> list[Nuclei]:
    """Hard negatives present in both classes: isolated atypical nuclei and lymphocyte clusters.

    Enlarged dark nuclei alone do not make a tumour; a cluster of them does. Lymphocyte foci are
    dark and crowded but small and round. Both keep the task from being "find the darkest blob".
    Marks the lymphocyte focus in ``occupied`` (in place).
    """
    groups = []
    if rng.random() < 0.4:  # 1-2 isolated enlarged dark nuclei (reactive atypia)
        k = int(rng.integers(1, 3))
        pts = free_points(poisson_points(rng, rng.uniform(4 * u, size - 4 * u, size=(12, 2)), 18 * u, k), occupied)
        groups.append(make_nuclei(rng, pts, 2.3 * u * scale * rng.uniform(1.2, 1.6, size=len(pts)),
                                   (1.0, 1.8), (0.06, 0.25), (1.1, 1.6), (0.1, 0.5)))
    if rng.random() < 0.35:  # an inflammatory focus: many small, round, very dark nuclei
        blob, _ = _blob(rng, size, rng.uniform(7, 12) * u, margin=4 * u)
        cand = np.argwhere(blob & ~occupied).astype(float)
        pts = poisson_points(rng, cand[rng.permutation(len(cand))], 3.6 * u * scale, 30)
        groups.append(make_nuclei(rng, pts, 1.6 * u * scale, (1.0, 1.15), (0.0, 0.05), (1.4, 1.9)))
        occupied |= blob
    return groups


# --------------------------------------------------------------------------- colour and optics


def _stains_to_rgb(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray) -> np.ndarray:
    """Beer-Lambert: ``RGB = I0 * exp(-(h * v_H + e * v_E))`` with per-tile stain jitter."""
    v_h = _V_HEMATOXYLIN + rng.normal(0, 0.06, size=3)
    v_e = _V_EOSIN + rng.normal(0, 0.06, size=3)
    v_h = np.abs(v_h) / np.linalg.norm(v_h)
    v_e = np.abs(v_e) / np.linalg.norm(v_e)
    h = hema * rng.uniform(0.7, 1.3)
    e = eosin * rng.uniform(0.7, 1.3)
    od = h[..., None] * v_h + e[..., None] * v_e
    background = rng.uniform(0.90, 1.0) * (1 - rng.uniform(0, 0.04, size=3))
    return background * np.exp(-od)


def _acquisition(rng: np.random.Generator, rgb: np.ndarray, u: float) -> np.ndarray:
    """Scanner optics: an optional defocus blur, then sensor noise."""
    if rng.random() < 0.6:
        sigma = rng.uniform(0.3, 0.9) * u
        rgb = ndimage.gaussian_filter(rgb, (sigma, sigma, 0))
    return rgb + rng.normal(0, rng.uniform(0.004, 0.03), size=rgb.shape)


# --------------------------------------------------------------------------- context look

# Two stain "looks" of the tissue around the lesion (per-channel transmittance of R, G, B at full
# strength): a warm, yellow-orange cast and a cool, blue-grey one, like two labs' eosin batches.
LOOKS: tuple[str, str] = ("warm", "cool")
_LOOK_TRANSMITTANCE = {
    "warm": np.array([1.00, 0.84, 0.66]),
    "cool": np.array([0.74, 0.84, 1.00]),
}


def _context_look(rng: np.random.Generator, rgb: np.ndarray, lesion: np.ndarray, look: int, u: float) -> np.ndarray:
    """Tint everything but the lesion: ``RGB *= T_look ** (s * (1 - soft))``, ``s ~ U(0.06, 0.16)``.

    ``soft`` is the lesion dilated by 2 px and blurred (sigma 1.5 px), so the lesion itself keeps
    its colours exactly (``soft = 1`` on it) and the tint fades in around it. A normal tile has no
    lesion: the whole tile is context.
    """
    if look not in (0, 1):
        raise ValueError(f"look must be 0 or 1, got {look!r}")
    strength = rng.uniform(0.06, 0.16)
    if lesion.any():
        grown = ndimage.binary_dilation(lesion, iterations=max(1, int(round(2 * u))))
        soft = np.maximum(ndimage.gaussian_filter(grown.astype(float), 1.5 * u), lesion)
    else:
        soft = np.zeros(lesion.shape)
    amount = strength * (1.0 - soft)
    return rgb * _LOOK_TRANSMITTANCE[LOOKS[look]] ** amount[..., None]


# --------------------------------------------------------------------------- pen mark


def _pen_mark(rng: np.random.Generator, rgb: np.ndarray, lesion: np.ndarray, u: float) -> tuple[np.ndarray, np.ndarray]:
    """A thick, curvy ink stroke (blue, green or black) that never touches the lesion.

    The stroke is a random-walk polyline; coverage is ``alpha = clip(w/2 - dist + 0.5, 0, 1)``
    and the ink is applied as a transmittance, ``RGB *= T_ink ** (strength * alpha)``. Up to 40
    placements are tried for one clear of the lesion (dilated by 2 px); failing that, the part
    over the lesion is cut away, so the guarantee holds by construction.
    """
    size = rgb.shape[0]
    forbidden = ndimage.binary_dilation(lesion, iterations=max(1, int(round(2 * u)))) if lesion.any() else lesion
    ink = _INKS[("blue", "green", "black")[int(rng.integers(3))]] * rng.uniform(0.95, 1.05, size=3)
    strength = rng.uniform(0.7, 1.3)
    width = rng.uniform(3.0, 6.0) * u
    alpha = np.zeros((size, size))
    for _ in range(40):
        alpha = _stroke_alpha(rng, size, width)
        if (alpha > 0)[forbidden].sum() == 0 and (alpha > 0.5).mean() > 0.02:
            break
    alpha = alpha * ~forbidden
    alpha *= 1 - 0.15 * rng.random(alpha.shape)  # uneven ink
    out = rgb * np.clip(ink, 1e-3, 1.0) ** (strength * alpha[..., None])
    artifact = alpha > 0.25
    assert not (artifact & lesion).any(), "pen mark overlaps the lesion"
    return out, artifact


def _stroke_alpha(rng: np.random.Generator, size: int, width: float) -> np.ndarray:
    """Coverage of one random curvy stroke starting near a tile edge.

    The polyline is sampled every 0.25 px, and the distance of every pixel to it comes from one
    Euclidean distance transform (exact to about 0.25 px, far cheaper than point-segment maths).
    """
    n_seg = 16
    length = rng.uniform(0.5, 1.2) * size
    side = int(rng.integers(4))
    t = rng.uniform(0.1, 0.9) * size
    start = np.array([(0.0, t), (size - 1.0, t), (t, 0.0), (t, size - 1.0)][side])
    heading = [np.pi / 2, -np.pi / 2, 0.0, np.pi][side] + rng.uniform(-0.7, 0.7)
    ang = heading + rng.normal(0, 0.35, size=n_seg).cumsum() * rng.choice([0.5, 1.0])
    step = length / n_seg
    # (y, x) = start + cumulative steps along angle; ang = 0 points along +x
    n_fine = int(np.ceil(step / 0.25))
    fine_ang = np.repeat(ang, n_fine)
    pts = start + np.cumsum(np.stack([np.sin(fine_ang), np.cos(fine_ang)], 1) * (step / n_fine), 0)
    pts = np.vstack([start, pts])
    pad = int(np.ceil(width)) + 2  # the stroke may run off the tile: rasterise on a padded canvas
    iy = np.rint(pts[:, 0]).astype(int) + pad
    ix = np.rint(pts[:, 1]).astype(int) + pad
    ok = (iy >= 0) & (iy < size + 2 * pad) & (ix >= 0) & (ix < size + 2 * pad)
    line = np.ones((size + 2 * pad, size + 2 * pad), dtype=bool)
    line[iy[ok], ix[ok]] = False
    dist = ndimage.distance_transform_edt(line)[pad:pad + size, pad:pad + size]
    return np.clip(width / 2 - dist + 0.5, 0, 1)
