"""Image stacks from files: .npy/.npz, FITS cubes, folders of FITS cutouts, tiles of one large image.

Every reader returns `Images`: float32 pixels (N, C, H, W) in the file's own units, per-image labels and
where they came from. One large image (a PNG, or a 2D FITS image, or a 3D one read with a tile size)
is cut into non-overlapping square tiles on a grid; `split_images` then holds out whole vertical bands
of tiles, so training and held-out tiles never share sky.

    imgs = read_images("xdf_left.png", tile=32)     # (N, 3, 32, 32), labels tile_x, tile_y [pixels]
    train, test = split_images(imgs, 0.2)            # the right 20 % of the image is held out
"""

from __future__ import annotations

import hashlib
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from specae.errors import SpecaeError

FITS_SUFFIXES = (".fits", ".fit", ".fts", ".fits.gz", ".fit.gz", ".fts.gz")
STACK_KEYS = ("images", "image", "pixels", "x")   # array names an .npz may hold its stack under
TILE_LABELS = ("tile_x", "tile_y")                # where a tile lies in its large image [pixels]


@dataclass
class Images:
    """N square images, float32 (N, C, H, W) in their own units (e.g. counts), with per-image labels.

    `meta` holds "source" (the file) and, for tiles of one large image, "tile" (side in pixels); tiles
    carry the labels tile_x and tile_y (the column and row of their first pixel in the large image)."""
    pixels: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]

    def select(self, rows) -> "Images":
        return Images(self.pixels[rows], {k: v[rows] for k, v in self.labels.items()}, dict(self.meta))

    def fingerprint(self) -> str:
        """SHA-256 of the pixels (to recognise the same training set later)."""
        return hashlib.sha256(np.ascontiguousarray(self.pixels).tobytes()).hexdigest()


def read_images(path, tile: int | None = None, default_tile: int | None = None) -> Images:
    """Images from `path`: a stack (.npy/.npz (N, H, W) or (N, C, H, W), a FITS cube, a folder of FITS
    cutouts), or one large image cut into `tile` x `tile` tiles (a PNG, a 2D FITS image, a 2D .npy; a 3D
    FITS image (C, H, W) when `tile` is given); `default_tile` cuts one large image when `tile` is not
    given. SpecaeError naming the file for anything else."""
    p = Path(path)
    if not p.exists():
        raise SpecaeError(f"{p}: no such file or folder")
    name = p.name.lower()
    if p.is_dir():
        arr, labels = _read_fits_folder(p), {}
    elif name.endswith(".npy") or name.endswith(".npz"):
        arr, labels = _read_numpy(p)
    elif name.endswith(FITS_SUFFIXES):
        arr, labels = _read_fits(p), {}
    elif name.endswith(".png"):
        arr, labels = _read_png(p), {}
    else:
        raise SpecaeError(f"{p}: unknown image format (use .npy, .npz, .fits, .png or a folder of FITS files)")
    return _as_images(p, arr, labels, tile, default_tile)


def _as_images(p: Path, arr: np.ndarray, labels: dict, tile: int | None, default_tile: int | None) -> Images:
    """A stack (N, C, H, W) or tiles of one image, from an array that is (H, W) or (C, H, W) for one image
    (PNGs arrive as (C, H, W); a 3D array is one image only when a tile size is given) or a stack."""
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise SpecaeError(f"{p}: holds {arr.dtype} values, not real numbers")
    single = arr.ndim == 2 or (arr.ndim == 3 and (tile is not None or p.name.lower().endswith(".png")))
    if single:
        tile = tile or default_tile
        if tile is None:
            raise SpecaeError(f"{p}: one {arr.shape[-2]}x{arr.shape[-1]} image; give --tile to cut it into tiles")
        return _tiles(p, _finite(p, arr.astype(np.float32)), tile)
    if tile is not None:
        raise SpecaeError(f"{p}: a stack of {arr.shape[0]} images; --tile cuts one large image only")
    if arr.ndim == 3:
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[0] == 0:
        raise SpecaeError(f"{p}: array of shape {arr.shape}; expected images (N, H, W) or (N, C, H, W)")
    if arr.shape[2] != arr.shape[3]:
        raise SpecaeError(f"{p}: images of {arr.shape[2]}x{arr.shape[3]} pixels; square images are expected")
    for k, v in labels.items():
        if v.shape != (arr.shape[0],):
            raise SpecaeError(f"{p}: label {k!r} has shape {v.shape}, expected ({arr.shape[0]},)")
    return Images(_finite(p, arr.astype(np.float32)), labels, {"source": str(p)})


def _finite(p: Path, arr: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(arr)
    if bad.any():
        warnings.warn(f"{p}: {int(bad.sum())} NaN/inf pixels set to 0 (no flux above the sky)", stacklevel=4)
        arr = np.where(bad, np.float32(0), arr)
    return arr


def _tiles(p: Path, img: np.ndarray, tile: int) -> Images:
    """Non-overlapping tile x tile squares (N, C, tile, tile) of one image (H, W) or (C, H, W), row by row."""
    img = img[None] if img.ndim == 2 else img
    c, h, w = img.shape
    if tile < 2 or tile > min(h, w):
        raise SpecaeError(f"{p}: tile size {tile} does not fit the {h}x{w} image")
    ny, nx = h // tile, w // tile
    cut = img[:, :ny * tile, :nx * tile].reshape(c, ny, tile, nx, tile)     # (C, ny, t, nx, t)
    pixels = np.ascontiguousarray(cut.transpose(1, 3, 0, 2, 4).reshape(ny * nx, c, tile, tile))
    ys, xs = np.meshgrid(np.arange(ny) * tile, np.arange(nx) * tile, indexing="ij")
    return Images(pixels, dict(zip(TILE_LABELS, (xs.ravel(), ys.ravel()))), {"source": str(p), "tile": int(tile)})


def split_images(images: Images, held_out: float = 0.2, seed: int = 0) -> tuple[Images, Images]:
    """(train, held-out). Tiles of one image: the right-most vertical bands of tiles (about `held_out` of
    the columns, at least one), so no sky is shared; a stack: a random `held_out` fraction of the rows."""
    n = len(images)
    if "tile" in images.meta:
        columns = np.unique(images.labels["tile_x"])
        if len(columns) < 2:
            raise SpecaeError(f"{images.meta['source']}: one column of tiles; cannot hold out a separate region")
        k = min(max(1, round(held_out * len(columns))), len(columns) - 1)
        test = images.labels["tile_x"] >= columns[-k]
    else:
        if n < 2:
            raise SpecaeError(f"{images.meta.get('source', 'images')}: {n} image(s); too few to hold some out")
        k = min(max(1, round(held_out * n)), n - 1)
        test = np.zeros(n, bool)
        test[np.random.default_rng(seed).permutation(n)[:k]] = True
    return images.select(~test), images.select(test)


def load_split(path, tile: int | None = None, size: int | None = None, held_out: float = 0.2,
               seed: int = 0) -> tuple[Images, Images, dict]:
    """(train, held-out, record) from `path`: read (tiles of `tile` for one large image, by default `size`),
    binned to `size` x `size` when given, split by `split_images`. The record (plain JSON) lets
    `reload_split` find the very same training images again."""
    images = read_images(path, tile, default_tile=size)
    if size is not None:
        images = bin_to(images, size)
    train, held = split_images(images, held_out, seed)
    record = {"path": str(Path(path).resolve()), "tile": images.meta.get("tile"), "size": images.size,
              "held_out": held_out, "seed": seed, "n_train": len(train), "sha256": train.fingerprint()}
    return train, held, record


def reload_split(record: dict) -> tuple[Images, Images]:
    """The (train, held-out) images a `load_split` record describes; SpecaeError when the file is gone or
    its training images changed."""
    try:
        path, tile, size, held_out, seed = (record[k] for k in ("path", "tile", "size", "held_out", "seed"))
    except (KeyError, TypeError):
        raise SpecaeError("the GAN does not record which images it was trained on") from None
    train, held, again = load_split(path, tile, size, held_out, seed)
    if again["sha256"] != record.get("sha256"):
        raise SpecaeError(f"{path}: no longer holds the images the GAN was trained on")
    return train, held


def bin_to(images: Images, size: int) -> Images:
    """Images summed over f x f pixel blocks to `size` x `size` (flux conserved); f must be an integer."""
    side = images.size
    if side == size:
        return images
    if side % size:
        raise SpecaeError(f"{images.meta.get('source', 'images')}: images of {side} pixels cannot be binned "
                          f"to {size} (need a multiple of {size})")
    f = side // size
    n, c = images.pixels.shape[:2]
    binned = images.pixels.reshape(n, c, size, f, size, f).sum(axis=(3, 5), dtype=np.float64).astype(np.float32)
    return Images(binned, images.labels, {**images.meta, "binned": f})


# -- formats -------------------------------------------------------------------------------------------
def _read_numpy(p: Path) -> tuple[np.ndarray, dict]:
    """(array, labels) from .npy (never pickles) or .npz (the stack under one of STACK_KEYS, or its only
    array; every other (N,) numeric array is a label)."""
    try:
        with open(p, "rb") as f:
            magic = f.read(6)
        if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):   # else np.load guesses a pickle and says so
            raise SpecaeError(f"{p}: not a readable NumPy file (not a {p.suffix.lower()} file: it does not start "
                              "with the NumPy or zip signature)")
        data = np.load(p, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data, {}
        with data:
            arrays = {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise SpecaeError(f"{p}: not a readable NumPy file ({str(e).splitlines()[0]})") from None
    key = next((k for k in STACK_KEYS if k in arrays), None)
    if key is None:
        big = [k for k, v in arrays.items() if v.ndim >= 2]
        if len(big) != 1:
            raise SpecaeError(f"{p}: cannot tell which array holds the images (arrays {sorted(arrays)}); "
                              f"name it {STACK_KEYS[0]!r}")
        key = big[0]
    labels = {k: v for k, v in arrays.items() if k != key and v.ndim == 1 and np.issubdtype(v.dtype, np.number)}
    return arrays[key], labels


def _read_fits(p: Path) -> np.ndarray:
    """The first HDU holding an image (2D, 3D or 4D) of a FITS file."""
    from astropy.io import fits

    try:
        with fits.open(p, memmap=False) as hdul:
            for hdu in hdul:
                if hdu.is_image and hdu.data is not None and hdu.data.ndim >= 2:
                    return np.asarray(hdu.data, dtype=np.float32)
    except (OSError, ValueError, TypeError, IndexError) as e:
        raise SpecaeError(f"{p}: not a readable FITS file ({str(e).splitlines()[0]})") from None
    raise SpecaeError(f"{p}: no image HDU with two or more dimensions")


def _read_fits_folder(d: Path) -> np.ndarray:
    """Cutouts (N, C, H, W) from every FITS file in folder `d` (sorted by name); each 2D or (C, H, W)."""
    files = sorted(f for f in d.iterdir() if f.is_file() and f.name.lower().endswith(FITS_SUFFIXES))
    if not files:
        raise SpecaeError(f"{d}: folder holds no FITS files")
    cutouts = []
    for f in files:
        img = _read_fits(f)
        img = img[None] if img.ndim == 2 else img
        if img.ndim != 3:
            raise SpecaeError(f"{f}: cutout of shape {img.shape}; expected (H, W) or (C, H, W)")
        if cutouts and img.shape != cutouts[0].shape:
            raise SpecaeError(f"{f}: cutout of shape {img.shape}, unlike {files[0].name} {cutouts[0].shape}")
        cutouts.append(img)
    return np.stack(cutouts)


def _read_png(p: Path) -> np.ndarray:
    """A PNG as (C, H, W) float32 (values in [0, 1]; alpha dropped; row 0 at the top as displayed)."""
    import matplotlib.image as mpimg

    try:
        img = np.asarray(mpimg.imread(p), dtype=np.float32)
    except (OSError, ValueError, SyntaxError) as e:
        raise SpecaeError(f"{p}: not a readable PNG ({str(e).splitlines()[0]})") from None
    if img.ndim == 2:
        return img[None]
    return np.ascontiguousarray(np.moveaxis(img[..., :3] if img.shape[-1] == 4 else img, -1, 0))
