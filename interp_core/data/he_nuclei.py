"""Nuclei of the synthetic H&E tiles (:mod:`interp_core.data.synthetic_he`): Poisson-disc
placement, elliptical shapes, chromatin texture painted into the stain channels."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Nuclei:
    """Parameters of a group of nuclei, one entry per nucleus (lengths in pixels)."""

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray  # semi-axes
    b: np.ndarray
    theta: np.ndarray
    irregular: np.ndarray  # amplitude of the Fourier border perturbation
    dark: np.ndarray  # hematoxylin concentration at the centre
    rim: np.ndarray  # extra darkness at the border (vesicular nuclei with a thick membrane)

    @staticmethod
    def empty() -> "Nuclei":
        z = np.zeros(0)
        return Nuclei(z, z, z, z, z, z, z, z)


def poisson_points(rng: np.random.Generator, candidates: np.ndarray, min_dist: float, limit: int) -> np.ndarray:
    """Greedy dart throwing: keep candidates (in the given random order) at least ``min_dist`` apart.

    Only the first ``8 * limit + 20`` candidates are tried, which bounds the cost per call; the
    loop runs once per kept point over a precomputed distance matrix.
    """
    cand = np.asarray(candidates, dtype=float).reshape(-1, 2)[: 8 * limit + 20]
    if len(cand) == 0 or limit <= 0:
        return np.zeros((0, 2))
    d2 = ((cand[:, None, :] - cand[None, :, :]) ** 2).sum(-1)
    alive = np.ones(len(cand), dtype=bool)
    kept = []
    while len(kept) < limit:
        i = int(alive.argmax())
        if not alive[i]:
            break
        kept.append(i)
        alive &= d2[i] >= min_dist**2
    return cand[kept]


def free_points(points: np.ndarray, occupied: np.ndarray) -> np.ndarray:
    """Points whose pixel is not in ``occupied``."""
    if len(points) == 0:
        return points
    iy = np.clip(points[:, 0].astype(int), 0, occupied.shape[0] - 1)
    ix = np.clip(points[:, 1].astype(int), 0, occupied.shape[1] - 1)
    return points[~occupied[iy, ix]]


def make_nuclei(rng: np.random.Generator, pts: np.ndarray, radius: np.ndarray | float,
                 elong: tuple[float, float], irregular: tuple[float, float], dark: tuple[float, float],
                 rim: tuple[float, float] = (0.0, 0.0), theta: np.ndarray | None = None) -> Nuclei:
    """Nuclei at ``pts`` with mean radius ``radius`` and aspect ratio, irregularity, darkness ranges."""
    n = len(pts)
    r = np.broadcast_to(np.asarray(radius, dtype=float), (n,))
    aspect = rng.uniform(*elong, size=n)
    return Nuclei(
        cy=pts[:, 0].copy(), cx=pts[:, 1].copy(),
        a=r * np.sqrt(aspect), b=r / np.sqrt(aspect),
        theta=rng.uniform(0, np.pi, size=n) if theta is None else theta,
        irregular=rng.uniform(*irregular, size=n), dark=rng.uniform(*dark, size=n),
        rim=rng.uniform(*rim, size=n),
    )


def paint_nuclei(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray, nuc: Nuclei, u: float) -> np.ndarray:
    """Draw all nuclei of ``nuc`` into ``hema`` (max) and thin ``eosin`` under them, vectorised.

    Each nucleus is evaluated on a square patch around its centre: in the rotated, axis-scaled
    frame ``rho = |(x'/a, y'/b)|`` and the border is ``r(phi) = 1 + sum_k c_k cos(k phi + psi_k)``,
    k = 2..4, so the coverage ``alpha = clip((r(phi) - rho) * min(a, b) + 0.5, 0, 1)`` is an
    anti-aliased irregular ellipse. Returns the coverage map.
    """
    size = hema.shape[0]
    alpha_map = np.zeros_like(hema)
    n = len(nuc.cy)
    if n == 0:
        return alpha_map
    half = int(np.ceil(np.max(nuc.a) * 1.5)) + 1
    d = np.arange(-half, half + 1, dtype=float)
    dy, dx = np.meshgrid(d, d, indexing="ij")  # [P,P]
    iy0 = np.rint(nuc.cy).astype(int)
    ix0 = np.rint(nuc.cx).astype(int)
    ry = dy[None] - (nuc.cy - iy0)[:, None, None]  # [N,P,P] offset from the true centre
    rx = dx[None] - (nuc.cx - ix0)[:, None, None]
    c, s = np.cos(nuc.theta)[:, None, None], np.sin(nuc.theta)[:, None, None]
    up = (rx * c + ry * s) / nuc.a[:, None, None]
    vp = (-rx * s + ry * c) / nuc.b[:, None, None]
    rho = np.hypot(up, vp)
    coef = rng.standard_normal((n, 3)) * nuc.irregular[:, None] / np.sqrt(3)
    psi = rng.uniform(0, 2 * np.pi, size=(n, 3))
    # cos(k phi + psi) = cos(k phi) cos(psi) - sin(k phi) sin(psi), with cos/sin(k phi) from the
    # angle-addition recurrence on (cos phi, sin phi) = (u, v) / rho: no arctan2, no cos per pixel.
    safe = np.maximum(rho, 1e-9)
    c1, s1 = up / safe, vp / safe
    ck, sk = c1, s1
    border = np.ones_like(rho)
    for j, k in enumerate((2, 3, 4)):
        ck, sk = ck * c1 - sk * s1, sk * c1 + ck * s1
        wc = (coef[:, j] * np.cos(psi[:, j]) / (k - 1))[:, None, None]
        ws = (coef[:, j] * np.sin(psi[:, j]) / (k - 1))[:, None, None]
        border += wc * ck - ws * sk
    depth = (border - rho) * np.minimum(nuc.a, nuc.b)[:, None, None]  # ~ pixels inside the border
    alpha = np.clip(depth + 0.5, 0.0, 1.0)
    chromatin = 1 + 0.22 * rng.standard_normal(alpha.shape)
    membrane = 1 + nuc.rim[:, None, None] * np.exp(-((depth - 0.6) / (0.6 * u + 0.3)) ** 2)
    value = alpha * nuc.dark[:, None, None] * chromatin * membrane

    py = iy0[:, None, None] + dy.astype(int)[None]
    px = ix0[:, None, None] + dx.astype(int)[None]
    ok = (py >= 0) & (py < size) & (px >= 0) & (px < size) & (alpha > 0)
    flat = (py * size + px)[ok]
    np.maximum.at(hema.reshape(-1), flat, value[ok])
    np.maximum.at(alpha_map.reshape(-1), flat, alpha[ok])
    eosin *= 1 - 0.55 * alpha_map
    return alpha_map


def stromal_nuclei(rng: np.random.Generator, size: int, u: float, scale: float, occupied: np.ndarray,
                    fibre_angle: float) -> Nuclei:
    """Background nuclei: elongated fibroblasts along the fibres, round stromal cells, lymphocytes."""
    density = rng.uniform(10, 30) / scale**2  # nuclei per 64x64 tile
    cand = rng.uniform(0, size, size=(int(density * 3) + 5, 2))
    pts = free_points(poisson_points(rng, cand, 4.2 * u * scale, int(density)), occupied)
    n = len(pts)
    kind = rng.choice(3, size=n, p=[0.45, 0.4, 0.15])
    groups = []
    fib = pts[kind == 0]
    groups.append(make_nuclei(rng, fib, 1.9 * u * scale, (2.5, 4.5), (0.02, 0.08), (0.8, 1.2),
                               theta=fibre_angle + rng.normal(0, 0.25, size=len(fib))))
    groups.append(make_nuclei(rng, pts[kind == 1], 2.3 * u * scale * rng.uniform(0.85, 1.15, size=int((kind == 1).sum())),
                               (1.0, 1.6), (0.03, 0.10), (0.8, 1.25), (0.0, 0.2)))
    groups.append(make_nuclei(rng, pts[kind == 2], 1.7 * u * scale, (1.0, 1.15), (0.0, 0.05), (1.3, 1.7)))
    return concat_nuclei(groups)


def concat_nuclei(groups: list[Nuclei]) -> Nuclei:
    out = Nuclei.empty()
    for f in out.__dataclass_fields__:
        setattr(out, f, np.concatenate([getattr(g, f) for g in groups]) if groups else getattr(out, f))
    return out
