"""The point-cloud steps of the Dinomaly2 preview code's MVTec 3D-AD preparation
(``preprocess_mvtec3d_1.py``, ``preprocess_mvtec3d_2.py``), on organised clouds ``H × W × 3``
(a zero point is no point). Used by ``prepare_mvtec3d.py``.

open3d's RANSAC and DBSCAN are replaced: the plane fit by a seeded numpy RANSAC with open3d's
rules (least-squares plane of each sample, best inlier count, ties to the lower RMSE, final
refit on the inliers), the clustering by scikit-learn's DBSCAN (same eps, min points counting
the point itself).
"""
from __future__ import annotations

import math

import numpy as np

BORDER = 10              # width of the border strips that show the table plane
PLANE_FIT = 0.004        # RANSAC inlier distance (open3d segment_plane's distance_threshold)
PLANE_SAMPLE = 50        # points per RANSAC sample (ransac_n)
PLANE_ITERATIONS = 1000
PLANE_REMOVE = 0.005     # points nearer the plane than this are removed
CLUSTER_EPS = 0.006      # DBSCAN radius
CLUSTER_MIN_POINTS = 30  # DBSCAN core points: at least this many within eps, the point included
FILL_PASSES = 3          # fill_gaps passes on the z channel


def clean_points(pc: np.ndarray) -> np.ndarray:
    """``H × W × 3`` with every point that has a NaN or infinite coordinate set to (0, 0, 0)."""
    bad = ~np.isfinite(pc).all(axis=-1)
    if bad.any():
        pc = pc.copy()
        pc[bad] = 0
    return pc


def border_points(pc: np.ndarray) -> np.ndarray:
    """The points of the top, bottom, left and right ``BORDER``-pixel strips (corners twice, as
    the preview) with no zero coordinate, ``N × 3``."""
    strips = [pc[:BORDER], pc[-BORDER:], pc[:, :BORDER], pc[:, -BORDER:]]
    points = np.concatenate([s.reshape(-1, 3) for s in strips])
    return points[np.all(points != 0, axis=1)]


def _planes(samples: np.ndarray) -> np.ndarray:
    """Least-squares planes ``K × 4`` (unit normal a, b, c and d) of point sets ``K × n × 3``."""
    centres = samples.mean(axis=1, keepdims=True)
    centred = samples - centres
    cov = np.einsum("kni,knj->kij", centred, centred)
    normals = np.linalg.eigh(cov)[1][:, :, 0]  # eigenvector of the smallest eigenvalue
    d = -np.einsum("ki,ki->k", normals, centres[:, 0])
    return np.concatenate([normals, d[:, None]], axis=1)


def ransac_plane(points: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """The table plane ``(a, b, c, d)`` of ``points`` ``N × 3`` by RANSAC, or None with fewer than
    ``PLANE_SAMPLE`` points (open3d stops with an error there)."""
    points = points.astype(np.float64)
    n = len(points)
    if n < PLANE_SAMPLE:
        return None
    homogeneous = np.concatenate([points, np.ones((n, 1))], axis=1)
    best, best_count, best_rmse = None, -1, math.inf
    for start in range(0, PLANE_ITERATIONS, 50):
        picks = np.stack([rng.choice(n, PLANE_SAMPLE, replace=False)
                          for _ in range(min(50, PLANE_ITERATIONS - start))])
        planes = _planes(points[picks])
        dist = np.abs(planes @ homogeneous.T)  # K × N
        inlier = dist < PLANE_FIT
        counts = inlier.sum(axis=1)
        rmse = np.sqrt(np.where(inlier, dist ** 2, 0).sum(axis=1) / np.maximum(counts, 1))
        for k in range(len(planes)):
            if counts[k] > best_count or (counts[k] == best_count and rmse[k] < best_rmse):
                best, best_count, best_rmse = planes[k], counts[k], rmse[k]
    inliers = np.abs(homogeneous @ best) < PLANE_FIT
    return _planes(points[inliers][None])[0] if inliers.sum() >= 3 else best


def remove_plane(pc: np.ndarray, rgb: np.ndarray, plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Zero every point (and its RGB pixel) with ``|a x + b y + c z + d| < PLANE_REMOVE``."""
    flat = pc.reshape(-1, 3).astype(np.float64)
    near = (np.abs(flat @ plane[:3] + plane[3]) < PLANE_REMOVE).reshape(pc.shape[:2])
    pc, rgb = pc.copy(), rgb.copy()
    pc[near] = 0
    rgb[near] = 0
    return pc, rgb


def square_side(height: int, width: int) -> int:
    """The padded side: the larger side rounded up to a multiple of 100."""
    return max(math.ceil(height / 100), math.ceil(width / 100)) * 100


def pad_square(array: np.ndarray) -> np.ndarray:
    """Zero-pad ``H × W [× C]`` to ``square_side``: ``⌊diff/2⌋`` before, the rest after."""
    height, width = array.shape[:2]
    side = square_side(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    pads = [(top, side - height - top), (left, side - width - left)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pads, mode="constant")


def keep_largest_cluster(pc: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """DBSCAN on the points with no zero coordinate; every point outside the most populous label
    (which may be noise, as in the preview) is zeroed with its RGB pixel. Returns the cloud, the
    RGB and the number of clusters found."""
    from sklearn.cluster import DBSCAN

    flat_pc, flat_rgb = pc.reshape(-1, 3).copy(), rgb.reshape(-1, *rgb.shape[2:]).copy()
    kept = np.nonzero(np.all(flat_pc != 0, axis=1))[0]
    if len(kept) == 0:
        return pc, rgb, 0
    labels = DBSCAN(eps=CLUSTER_EPS, min_samples=CLUSTER_MIN_POINTS).fit_predict(flat_pc[kept].astype(np.float64))
    ids, sizes = np.unique(labels, return_counts=True)
    outside = kept[labels != ids[np.argmax(sizes)]]
    flat_pc[outside] = 0
    flat_rgb[outside] = 0
    return flat_pc.reshape(pc.shape), flat_rgb.reshape(rgb.shape), int(labels.max()) + 1


def _sequential(terms: list[np.ndarray]) -> np.ndarray:
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _window_sums(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pixel the sum of its 3 × 3 window (in numpy's float order for such a window: pairwise
    for nine values, left to right for fewer) and the count of positive values in it; windows
    of the last row and column are cut, those of row 0 and column 0 are not used."""
    h, w = img.shape
    sums, counts = np.zeros_like(img), np.zeros(img.shape, np.int64)
    positive = (img > 0).astype(np.int64)

    def shifted(a, rows, cols):  # the window members of the pixels [rows, cols], row-major
        return [a[r0:r1, c0:c1] for r0, r1 in rows for c0, c1 in cols]

    full_r, full_c = [(i, h - 2 + i) for i in range(3)], [(j, w - 2 + j) for j in range(3)]
    last_r, last_c = [(h - 2 + i, h - 1 + i) for i in range(2)], [(w - 2 + j, w - 1 + j) for j in range(2)]
    a = shifted(img, full_r, full_c)
    sums[1:-1, 1:-1] = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])) + a[8]
    counts[1:-1, 1:-1] = sum(shifted(positive, full_r, full_c))
    for (rows, cols, out_r, out_c) in ((last_r, full_c, slice(h - 1, h), slice(1, -1)),
                                       (full_r, last_c, slice(1, -1), slice(w - 1, w)),
                                       (last_r, last_c, slice(h - 1, h), slice(w - 1, w))):
        sums[out_r, out_c] = _sequential(shifted(img, rows, cols))
        counts[out_r, out_c] = sum(shifted(positive, rows, cols))
    return sums, counts


def fill_gaps(img: np.ndarray) -> np.ndarray:
    """One pass of the preview's ``fill_gaps`` on a depth image ``H × W`` (H, W >= 3): every zero
    pixel with a positive value in its 3 × 3 window gets ``sum(window) / count(window > 0)`` of
    the image before the pass; row 0 and column 0 are never filled (their windows are empty
    there: a negative slice start)."""
    sums, counts = _window_sums(img)
    fill = (img == 0) & (counts > 0)
    fill[0, :] = False
    fill[:, 0] = False
    out = img.copy()
    out[fill] = (sums[fill].astype(np.float64) / counts[fill]).astype(img.dtype)
    return out


def depth_from_cloud(pc: np.ndarray) -> np.ndarray:
    """The z image the dataset reads: the last channel, ``fill_gaps`` ``FILL_PASSES`` times."""
    z = np.ascontiguousarray(pc[:, :, -1])
    for _ in range(FILL_PASSES):
        z = fill_gaps(z)
    return z
