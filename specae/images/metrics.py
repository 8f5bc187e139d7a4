"""Quality metrics for generated images that need no downloaded network.

Morphology (computed the same way on any image, real or generated, in the images' own units, bands
summed): total flux, half-light radius r50, concentration r80/r20, ellipticity from second moments,
asymmetry under a 180-degree rotation and smoothness (clumpiness), both less the sky's, Gini coefficient. Distribution distances: the 1D Wasserstein
distance per statistic divided by the real values' standard deviation; on feature vectors, the kernel
inception distance (KID, Binkowski et al. 2018) and k-NN precision / recall (Kynkaanniemi et al. 2019);
memorisation as distances to the nearest training image.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter
from scipy.spatial.distance import cdist
from scipy.stats import wasserstein_distance

MORPHOLOGY = ("flux", "r50", "concentration", "ellipticity", "asymmetry", "smoothness", "gini")


def morphology(pixels: np.ndarray) -> dict[str, np.ndarray]:
    """Statistics (N,) each of images (N, C, H, W), bands summed, after statmorph's definitions (Rodriguez-Gomez
    et al. 2019) inside the aperture of 1.5 Petrosian radii, so they describe the galaxy, not the sky, but
    vectorised over N and simplified where noted (the test compares with statmorph where it is installed).

    Centre: the centroid of the positive flux. Petrosian radius r_P: the first 1-pixel annulus whose mean
    surface brightness is below 0.2 of the mean inside it (capped at min(H, W)/2). Flux: the whole cutout.
    Radii from the growth curve inside the aperture: r_f = sqrt(k / pi), k the number of pixels, nearest
    first, that hold a fraction f of the aperture's flux (the radius of a disc of that area, never 0)
    [pixels]; concentration r80 / r20 (statmorph's is 5 log10 of it). Ellipticity 1 - sqrt(l2 / l1) from
    the eigenvalues of the second moments of the positive flux with a Gaussian weight of width r50.
    Gini (Lotz et al. 2004) of |I| over the aperture's pixels (statmorph's over its own Gini segmentation,
    so its values are lower). Asymmetry (Lotz et al. 2004, eq. 10) (sum|I - I_180| - n B) / sum|I| over
    the n aperture pixels, rotated about the image centre (statmorph: about the centre that minimises A).
    Smoothness (Conselice 2003; Lotz et al. eq. 11) (sum max(I - I_s, 0) - n S_B) / sum I over the n pixels
    of the aperture outside 0.25 r_P, I_s the image under a 3x3 boxcar (statmorph's is 0.25 r_P wide, which
    on small stamps is 1 pixel: no smoothing), and 0 where that annulus holds no net light (statmorph: invalid).
    B and S_B are the sky's terms per pixel, as statmorph subtracts them: the mean |I - I_180| and
    max(I - I_s, 0) of the pixels outside the aperture (statmorph: of a box outside the segmentation map);
    without them both statistics measure the noise of a noisy stamp. No sky pixel: no correction.
    """
    img = pixels.astype(np.float64).sum(axis=1)                     # (N, H, W)
    n, h, w = img.shape
    yy, xx = np.mgrid[:h, :w].astype(np.float64)
    pos = np.clip(img, 0, None)
    mass = pos.sum(axis=(1, 2))
    safe = np.maximum(mass, 1e-300)
    cy = np.where(mass > 0, (pos * yy).sum(axis=(1, 2)) / safe, (h - 1) / 2)   # a blank image: the centre
    cx = np.where(mass > 0, (pos * xx).sum(axis=(1, 2)) / safe, (w - 1) / 2)
    dy, dx = yy[None] - cy[:, None, None], xx[None] - cx[:, None, None]    # (N, H, W)
    dist = np.hypot(dx, dy).reshape(n, -1)                          # (N, P)
    flat = img.reshape(n, -1)
    r_p = petrosian_radius(flat, dist, min(h, w) / 2)[:, None]     # (N, 1)
    inside = dist <= 1.5 * r_p
    order = np.argsort(np.where(inside, dist, np.inf), axis=1, kind="stable")
    grow = np.cumsum(np.take_along_axis(np.where(inside, flat, 0), order, axis=1), axis=1)   # (N, P)
    total_in = grow[:, -1]

    def radius(frac):
        reached = grow >= frac * total_in[:, None]
        k = np.where(total_in > 0, reached.argmax(axis=1) + 1, inside.sum(axis=1))
        return np.sqrt(k / np.pi)

    r20, r50, r80 = radius(0.2), radius(0.5), radius(0.8)

    wgt = pos * np.exp(-0.5 * (np.hypot(dx, dy) / r50[:, None, None]) ** 2)
    sw = np.maximum(wgt.sum(axis=(1, 2)), 1e-300)
    qxx, qyy, qxy = ((wgt * a * b).sum(axis=(1, 2)) / sw for a, b in ((dx, dx), (dy, dy), (dx, dy)))
    half_trace, root = (qxx + qyy) / 2, np.sqrt(((qxx - qyy) / 2) ** 2 + qxy ** 2)
    l1, l2 = half_trace + root, np.maximum(half_trace - root, 0)
    ellipticity = np.where(l1 > 0, 1 - np.sqrt(l2 / np.maximum(l1, 1e-300)), 0.0)

    sky = ~inside
    rot = img[:, ::-1, ::-1].reshape(n, -1)
    turned = np.abs(flat - rot)
    pairs = sky & sky[:, ::-1]                                      # sky pixels whose 180-degree partner is sky too
    sky_asym = (turned * pairs).sum(axis=1) / np.maximum(pairs.sum(axis=1), 1)
    asymmetry = (((turned * inside).sum(axis=1) - inside.sum(axis=1) * sky_asym)
                 / np.maximum((np.abs(flat) * inside).sum(axis=1), 1e-300))
    lumps = np.clip(img - uniform_filter(img, size=(1, 3, 3), mode="nearest"), 0, None).reshape(n, -1)
    sky_lumps = (lumps * sky).sum(axis=1) / np.maximum(sky.sum(axis=1), 1)
    outer = inside & (dist >= 0.25 * r_p)
    net = (flat * outer).sum(axis=1)
    smoothness = np.where(net > 0, ((lumps * outer).sum(axis=1) - outer.sum(axis=1) * sky_lumps)
                          / np.maximum(net, 1e-300), 0.0)
    return {"flux": flat.sum(axis=1), "r50": r50, "concentration": r80 / r20, "ellipticity": ellipticity,
            "asymmetry": asymmetry, "smoothness": smoothness, "gini": gini(np.abs(flat), inside)}


def petrosian_radius(flat: np.ndarray, dist: np.ndarray, r_max: float, eta: float = 0.2) -> np.ndarray:
    """Petrosian radius (N,) [pixels] of images flat (N, P) with pixel distances dist (N, P) from their
    centres: the middle of the first 1-pixel annulus whose mean surface brightness is below `eta` times the
    mean inside its outer edge; r_max when none is."""
    n, nb = flat.shape[0], int(r_max)
    ring = np.minimum(dist.astype(int), nb)                         # (N, P) annulus index; nb: outside
    rows = np.broadcast_to(np.arange(n)[:, None], ring.shape)
    ring_flux, ring_area = np.zeros((n, nb + 1)), np.zeros((n, nb + 1))
    np.add.at(ring_flux, (rows, ring), flat)
    np.add.at(ring_area, (rows, ring), 1.0)
    ring_flux, ring_area = ring_flux[:, :nb], ring_area[:, :nb]     # annulus k spans [k, k + 1) pixels
    flux, area = np.cumsum(ring_flux, axis=1), np.cumsum(ring_area, axis=1)
    ratio = (ring_flux / np.maximum(ring_area, 1)) / np.where(flux > 0, flux / np.maximum(area, 1), np.inf)
    below = (ratio < eta) & (ring_area > 0)
    below[:, 0] = False                                             # the central pixel is no annulus
    return np.where(below.any(axis=1), below.argmax(axis=1) + 0.5, r_max)


def gini(values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Gini coefficient (N,) of the non-negative `values` (N, P) where `use` (N, P) is True:
    G = sum_i (2i - n - 1) X_i / ((n - 1) sum X), X sorted ascending (Lotz et al. 2004)."""
    x = np.sort(np.where(use, values, np.nan), axis=1)              # NaNs (unused) sort last
    n = use.sum(axis=1)
    i = np.arange(1, x.shape[1] + 1)[None]
    terms = np.where(np.isnan(x), 0.0, (2 * i - n[:, None] - 1) * np.nan_to_num(x))
    total = np.nansum(x, axis=1)
    return terms.sum(axis=1) / np.maximum((n - 1) * total, 1e-300)


def normalised_wasserstein(real: np.ndarray, other: np.ndarray) -> float:
    """1D Wasserstein distance between samples `real` (N,) and `other` (M,) in units of std(real)."""
    spread = float(np.std(real))
    return float(wasserstein_distance(real, other) / spread) if spread > 0 else float("inf")


def morphology_distances(real: dict, other: dict) -> dict[str, float]:
    """normalised_wasserstein per statistic of two `morphology` results."""
    return {k: normalised_wasserstein(real[k], other[k]) for k in MORPHOLOGY}


def standardise(reference: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """Feature sets (N, D) in units of the reference set's mean and spread per feature, keeping only the
    features that vary among the reference rows (a feature constant there, e.g. a ReLU that never fires on
    real images, would otherwise be divided by ~0 and swamp every distance)."""
    mu, sd = reference.mean(axis=0), reference.std(axis=0)
    keep = sd > 1e-6 * max(float(sd.max()), 1e-300)
    return [(f[:, keep] - mu[keep]) / sd[keep] for f in (reference, *others)]


def kid(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD between feature sets x (N, D) and y (M, D) with the cubic polynomial kernel
    k(a, b) = (a.b / D + 1)^3 (the kernel inception distance); about 0 for one distribution, may be < 0."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    d = x.shape[1]
    kxx, kyy, kxy = ((a @ b.T / d + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    n, m = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                 - 2 * kxy.mean())


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x (N, D) to its k-th nearest other row (N,)."""
    dist = cdist(x, x)
    return np.partition(dist, k, axis=1)[:, k]   # column 0 of the partition is the point itself


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of features fake (M, D) against real (N, D):
    precision, the fraction of fake points inside some real point's k-NN ball; recall, the fraction of
    real points inside some fake point's k-NN ball. Mode collapse shows as high precision, low recall."""
    dist = cdist(fake, real)                                          # (M, N)
    precision = (dist <= knn_radii(real, k)[None]).any(axis=1).mean()
    recall = (dist <= knn_radii(fake, k)[:, None]).any(axis=0).mean()
    return {"precision": float(precision), "recall": float(recall)}


def nearest_distances(queries: np.ndarray, reference: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Euclidean distance (N,) from each query (N, ...) to its nearest reference row (M, ...), flattened."""
    q, r = queries.reshape(len(queries), -1), reference.reshape(len(reference), -1)
    return np.concatenate([cdist(q[a:a + chunk], r).min(axis=1) for a in range(0, len(q), chunk)])
