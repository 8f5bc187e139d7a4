"""Image readers (every format and its errors), tiles and the split by region, the asinh stretch and the
augmentations."""

import warnings

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from astropy.io import fits

from specae.errors import SpecaeError
from specae.images.data import bin_to, load_split, read_images, reload_split, split_images
from specae.images.transforms import AsinhStretch, cutout, dihedral, flip_rot, translate
from tests.conftest import shared_dir

RNG = np.random.default_rng(0)


def stack(*shape):
    return RNG.normal(0, 1, shape).astype(np.float32)


def test_npy_stacks_with_and_without_channel_axis(tmp_path):
    three, four = stack(5, 8, 8), stack(4, 2, 8, 8)
    np.save(tmp_path / "a.npy", three)
    np.save(tmp_path / "b.npy", four.astype(np.float64))
    a, b = read_images(tmp_path / "a.npy"), read_images(tmp_path / "b.npy")
    assert a.pixels.shape == (5, 1, 8, 8) and a.pixels.dtype == np.float32
    np.testing.assert_array_equal(a.pixels[:, 0], three)
    assert b.pixels.shape == (4, 2, 8, 8) and b.pixels.dtype == np.float32
    np.testing.assert_allclose(b.pixels, four)
    assert a.meta["source"].endswith("a.npy") and a.labels == {}


def test_npz_images_with_labels_and_an_unnamed_stack(tmp_path):
    imgs = stack(6, 1, 8, 8)
    np.savez(tmp_path / "l.npz", images=imgs, flux=np.arange(6.0), name=np.array(list("abcdef")))
    np.savez(tmp_path / "u.npz", imgs[:, 0], np.arange(6))        # arr_0 (6, 8, 8), arr_1 (6,)
    got = read_images(tmp_path / "l.npz")
    np.testing.assert_array_equal(got.pixels, imgs)
    assert list(got.labels) == ["flux"]                               # strings are not labels
    np.testing.assert_array_equal(got.labels["flux"], np.arange(6.0))
    unnamed = read_images(tmp_path / "u.npz")
    assert unnamed.pixels.shape == (6, 1, 8, 8) and list(unnamed.labels) == ["arr_1"]


def test_fits_cube_and_folder_of_cutouts(tmp_path):
    cube = stack(4, 8, 8)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(cube)]).writeto(tmp_path / "cube.fits")
    got = read_images(tmp_path / "cube.fits")
    assert got.pixels.shape == (4, 1, 8, 8)
    np.testing.assert_array_equal(got.pixels[:, 0], cube)
    folder = tmp_path / "cutouts"
    folder.mkdir()
    cutouts = stack(3, 2, 8, 8)
    for i, c in zip((2, 0, 1), cutouts[[2, 0, 1]]):                  # written out of order, read by name
        fits.PrimaryHDU(c.astype(">f4")).writeto(folder / f"gal{i}.fits")
    (folder / "notes.txt").write_text("not a cutout")
    got = read_images(folder)
    assert got.pixels.shape == (3, 2, 8, 8)
    np.testing.assert_array_equal(got.pixels, cutouts)


def test_large_png_is_cut_into_tiles_and_split_into_bands_that_share_no_sky(tmp_path):
    rgb = RNG.uniform(0, 1, (40, 64, 3)).astype(np.float32)
    mpimg.imsave(tmp_path / "big.png", rgb)
    back = mpimg.imread(tmp_path / "big.png")[..., :3]               # 8-bit quantised, as the reader sees it
    tiles = read_images(tmp_path / "big.png", tile=8)
    assert tiles.pixels.shape == (5 * 8, 3, 8, 8) and tiles.meta["tile"] == 8
    k = 13                                                            # row 1, column 5
    y, x = tiles.labels["tile_y"][k], tiles.labels["tile_x"][k]
    assert (y, x) == (8, 40)
    np.testing.assert_array_equal(tiles.pixels[k], back[y:y + 8, x:x + 8].transpose(2, 0, 1))
    train, test = split_images(tiles, 0.25)
    assert len(test) == 10 and len(train) == 30                      # 2 of 8 columns, all 5 rows
    assert train.labels["tile_x"].max() + 8 <= test.labels["tile_x"].min()


def test_hubble_deep_field_tiles():
    img = read_images(shared_dir("images") / "xdf_left.png", tile=32)
    assert img.pixels.shape == (27 * 18, 3, 32, 32)                   # 872 x 600 pixels
    train, test = split_images(img, 0.2)
    assert set(np.unique(test.labels["tile_x"])) == {14 * 32, 15 * 32, 16 * 32, 17 * 32}
    assert len(train) + len(test) == len(img)


def test_fits_image_tiles_with_bands_and_binning(tmp_path):
    big = stack(2, 16, 24)                                             # (C, H, W)
    fits.PrimaryHDU(big).writeto(tmp_path / "big.fits")
    tiles = read_images(tmp_path / "big.fits", tile=8)
    assert tiles.pixels.shape == (6, 2, 8, 8)
    binned = bin_to(tiles, 4)
    assert binned.pixels.shape == (6, 2, 4, 4)
    np.testing.assert_allclose(binned.pixels.sum(axis=(2, 3)), tiles.pixels.sum(axis=(2, 3)), rtol=1e-5, atol=1e-4)
    with pytest.raises(SpecaeError, match="cannot be binned to 3"):
        bin_to(tiles, 3)


def test_split_record_finds_the_same_images_again(tmp_path):
    np.save(tmp_path / "s.npy", stack(20, 8, 8))
    train, held, record = load_split(tmp_path / "s.npy", held_out=0.25, seed=3)
    assert (len(train), len(held)) == (15, 5)
    again, held_again = reload_split(record)
    np.testing.assert_array_equal(again.pixels, train.pixels)
    np.testing.assert_array_equal(held_again.pixels, held.pixels)
    np.save(tmp_path / "s.npy", stack(20, 8, 8))
    with pytest.raises(SpecaeError, match="no longer holds"):
        reload_split(record)


def test_non_finite_pixels_become_zero_with_one_warning(tmp_path):
    x = stack(3, 8, 8)
    x[0, 0, :3] = np.nan
    x[1, 2, 2] = np.inf
    np.save(tmp_path / "nan.npy", x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_images(tmp_path / "nan.npy")
    assert len(caught) == 1 and "4 NaN/inf pixels" in str(caught[0].message)
    assert np.isfinite(got.pixels).all() and got.pixels[0, 0, 0, :3].tolist() == [0, 0, 0]


class _Evil:
    def __reduce__(self):
        return (print, ("pickled code ran",))


def _write(path, kind):
    """Bad input files of several kinds, written at `path`."""
    if kind == "pickled":
        np.save(path, np.array([_Evil()], dtype=object), allow_pickle=True)
    elif kind == "vector":
        np.save(path, np.zeros(5))
    elif kind == "rect":
        np.save(path, np.zeros((3, 8, 6)))
    elif kind == "complex":
        np.save(path, np.zeros((3, 8, 8), complex))
    elif kind == "text":
        np.save(path, np.array([["a"] * 8] * 8 * 3).reshape(3, 8, 8))
    elif kind == "two_stacks":
        np.savez(path, a=np.zeros((3, 8, 8)), b=np.zeros((3, 8, 8)))
    elif kind == "bad_label":
        np.savez(path, images=np.zeros((3, 8, 8)), flux=np.zeros(4))
    elif kind == "table_fits":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(path)
    elif kind == "truncated_fits":
        fits.PrimaryHDU(np.zeros((4, 16, 16), np.float32)).writeto(path)
        path.write_bytes(path.read_bytes()[:3000])
    elif kind == "garbage":
        path.write_bytes(b"\x00not an image at all" * 10)
    elif kind == "empty_dir":
        path.mkdir()
    elif kind == "mixed_dir":
        path.mkdir()
        fits.PrimaryHDU(np.zeros((8, 8))).writeto(path / "a.fits")
        fits.PrimaryHDU(np.zeros((9, 9))).writeto(path / "b.fits")
    elif kind == "stack4":
        np.save(path, np.zeros((3, 1, 8, 8)))
    elif kind == "one_image":
        np.save(path, np.zeros((40, 40)))


@pytest.mark.parametrize("name, kind, tile, message", [
    ("missing.npy", None, None, "no such file"),
    ("x.txt", "garbage", None, "unknown image format"),
    ("p.npy", "pickled", None, "not a readable NumPy file"),
    ("v.npy", "vector", None, "expected images (N, H, W)"),
    ("r.npy", "rect", None, "square images"),
    ("c.npy", "complex", None, "not real numbers"),
    ("t.npy", "text", None, "not real numbers"),
    ("g.npy", "garbage", None, "not a readable NumPy file"),
    ("two.npz", "two_stacks", None, "cannot tell which array"),
    ("lab.npz", "bad_label", None, "label 'flux' has shape (4,)"),
    ("tab.fits", "table_fits", None, "no image HDU"),
    ("trunc.fits", "truncated_fits", None, "FITS"),
    ("g.png", "garbage", 8, "not a readable PNG"),
    ("empty", "empty_dir", None, "holds no FITS files"),
    ("mixed", "mixed_dir", None, "unlike a.fits"),
    ("one.npy", "one_image", None, "give --tile"),
    ("one.npy", "one_image", 64, "does not fit the 40x40 image"),
    ("s.npy", "stack4", 4, "--tile cuts one large image only"),
])
@pytest.mark.filterwarnings("ignore:File may have been truncated")
def test_bad_input_is_one_line_naming_the_file(tmp_path, capsys, name, kind, tile, message):
    path = tmp_path / name
    if kind:
        _write(path, kind)
    with pytest.raises(SpecaeError) as e:
        read_images(path, tile=tile)
    text = str(e.value)
    assert message in text and name in text and "\n" not in text
    assert "pickled code ran" not in capsys.readouterr().out


def test_asinh_stretch_round_trip_is_exact_and_keeps_zero_at_zero():
    sky = RNG.normal(0, 3.0, (50, 2, 16, 16))
    sky[:, 1] *= 10                                                    # a noisier second band
    sky[:5, :, 8, 8] += 1e5                                            # bright cores
    s = AsinhStretch.fit(sky)
    np.testing.assert_allclose(s.scale, [3.0, 30.0], rtol=0.05)      # the sky noise per band
    y = s.forward(sky)
    assert y.dtype == np.float32 and np.abs(y).max() <= 1 and np.isclose(np.abs(y[:, 0]).max(), 1)
    assert s.forward(np.zeros((1, 2, 1, 1))).tolist() == [[[[0.0]], [[0.0]]]]
    back = s.inverse(y)                                                # exact up to float32 rounding of y
    np.testing.assert_allclose(back, sky, rtol=2e-6, atol=1e-6 * max(s.scale))
    assert AsinhStretch.from_dict(s.to_dict()) == s
    with pytest.raises(SpecaeError, match="no signal"):
        AsinhStretch.fit(np.zeros((3, 1, 4, 4)))
    soft = AsinhStretch.fit(sky, softening=10)                        # linear up to 10 sigma of the sky
    np.testing.assert_allclose(soft.scale, 10 * np.array(s.scale))
    assert soft.peak == s.peak
    np.testing.assert_allclose(soft.inverse(soft.forward(sky)), sky, rtol=2e-6, atol=1e-6 * max(soft.scale))
    assert soft.forward(sky[5:]).std() < y[5:].std() / 5                # the sky noise compressed
    with pytest.raises(SpecaeError, match="softening must be positive"):
        AsinhStretch.fit(sky, softening=0)


def test_flip_rot_only_moves_pixels_and_draws_all_eight_symmetries():
    x = torch.from_numpy(stack(400, 2, 6, 6))
    y = flip_rot(x, torch.Generator().manual_seed(0))
    candidates = [np.flip(np.rot90(x.numpy(), k % 4, axes=(2, 3)), 3) if k >= 4 else np.rot90(x.numpy(), k, axes=(2, 3))
                  for k in range(8)]
    which = np.array([[np.array_equal(y[i].numpy(), c[i]) for c in candidates] for i in range(len(x))])
    assert (which.sum(axis=1) == 1).all()                             # each image is exactly one symmetry
    assert set(which.argmax(axis=1)) == set(range(8))
    torch.testing.assert_close(y.sum(dim=(2, 3)), x.sum(dim=(2, 3)), rtol=0, atol=1e-5)   # flux per band conserved
    torch.testing.assert_close(torch.sort(y.flatten(1)).values, torch.sort(x.flatten(1)).values, rtol=0, atol=0)
    torch.testing.assert_close(dihedral(x[:3], torch.tensor([0, 0, 0])), x[:3], rtol=0, atol=0)


def test_diffaugment_translation_and_cutout_are_differentiable_and_bounded():
    g = torch.Generator().manual_seed(1)
    x = torch.zeros(64, 1, 16, 16)
    x[:, 0, 8, 8] = 1.0                                               # one bright pixel per image
    x.requires_grad_(True)
    moved = translate(x, g)                                           # shifts up to 2 pixels (1/8 of 16)
    pos = moved.detach()[:, 0].flatten(1).argmax(dim=1)
    dy, dx = pos // 16 - 8, pos % 16 - 8
    assert dy.abs().max() <= 2 and dx.abs().max() <= 2 and (dy != 0).any() and (dx != 0).any()
    assert torch.equal(moved.detach().sum(dim=(1, 2, 3)), torch.ones(64))
    moved.sum().backward()                                            # gradient 1 on every pixel still in view
    assert torch.equal(x.grad.sum(dim=(1, 2, 3)), ((16 - dy.abs()) * (16 - dx.abs())).float())
    holes = cutout(torch.ones(32, 2, 16, 16), g)
    assert ((holes == 0).sum(dim=(1, 2, 3)) == 2 * 8 * 8).all()       # one 8x8 square per image, all bands
