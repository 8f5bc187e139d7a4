import h5py
import numpy as np
import pytest

from specae.data.hdf5 import H5Spectra, iter_h5, read_h5, write_h5
from specae.errors import SpecaeError
from tests.conftest import write_mismatched_h5


def test_round_trip_is_exact(tmp_path, small_spectra):
    s = small_spectra.normalise()
    path = tmp_path / "s.h5"
    write_h5(s, path)
    r = read_h5(path)
    for name in ("wave", "flux", "ivar", "mask", "ids", "scale"):
        a, b = getattr(s, name), getattr(r, name)
        assert a.dtype == b.dtype and np.array_equal(a, b), name
    assert set(r.labels) == {"Z", "CLASS"}
    assert np.array_equal(r.labels["Z"], s.labels["Z"]) and r.labels["CLASS"].tolist() == s.labels["CLASS"].tolist()
    assert r.meta == s.meta
    with h5py.File(path) as f:
        assert f.attrs["specae_format"] == 1
        assert f["flux"].dtype == np.float32 and f["wave"].dtype == np.float64 and f["flux"].chunks is not None
    assert [p.name for p in tmp_path.iterdir()] == ["s.h5"]      # no temporary left behind


def test_lazy_batches_return_the_same_rows(tmp_path, small_spectra):
    path = tmp_path / "s.h5"
    write_h5(small_spectra, path)
    batches = list(iter_h5(path, batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 1]
    full = read_h5(path)
    assert np.array_equal(np.concatenate([b.flux for b in batches]), full.flux)
    assert np.concatenate([b.ids for b in batches]).tolist() == full.ids.tolist()
    with H5Spectra(path) as h5:
        part = h5.read(slice(3, 6))
        assert part.ids.tolist() == ["obj3", "obj4", "obj5"]
        assert np.array_equal(part.labels["Z"], small_spectra.labels["Z"][3:6])


def test_truncated_file_is_a_clear_error(tmp_path, small_spectra):
    path = tmp_path / "s.h5"
    write_h5(small_spectra, path)
    data = path.read_bytes()
    bad = tmp_path / "cut.h5"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecaeError, match="cut.h5"):
        read_h5(bad)


def test_not_specae_and_missing(tmp_path):
    with pytest.raises(SpecaeError, match="no such file"):
        read_h5(tmp_path / "nope.h5")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.arange(3)
    with pytest.raises(SpecaeError, match="not a specae HDF5 file"):
        read_h5(other)
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(SpecaeError, match="not a readable HDF5 file"):
        read_h5(text)


def test_mismatched_shapes_in_file(tmp_path):
    path = tmp_path / "bad.h5"
    write_mismatched_h5(path)
    with pytest.raises(SpecaeError, match="inconsistent shapes"):
        read_h5(path)


def test_failed_write_leaves_no_file(tmp_path, small_spectra):
    with pytest.raises(SpecaeError, match="does not exist"):
        write_h5(small_spectra, tmp_path / "missing_dir" / "out.h5")
    path = tmp_path / "out.h5"
    with pytest.raises(TypeError):
        write_h5(small_spectra, path, extra={"bad": np.array([object()])})
    assert list(tmp_path.iterdir()) == []
