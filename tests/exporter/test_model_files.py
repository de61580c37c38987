"""The bounded .npz / .npy readers (--dataset, --calibration-data, --calibration): numpy's own np.load is the reference
for valid files; a header that declares more than the member holds, pickled objects and files
over the byte limit are refused before anything is decompressed or allocated."""

import io
import zipfile

import numpy as np
import pytest

from edgepack.exporter.model_files import ModelFileError, load_npy, load_npz


def npz_with_header(path, shape, payload: bytes) -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header.getvalue() + payload)


def test_valid_files_read_as_numpy_reads_them(tmp_path):
    path = tmp_path / "data.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32), y=np.arange(5))
    arrays = load_npz(path, "--dataset data.npz")
    with np.load(path) as reference:
        assert set(arrays) == set(reference.files)
        for key in reference.files:
            np.testing.assert_array_equal(arrays[key], reference[key])


def test_a_header_that_declares_terabytes_is_refused_before_allocating(tmp_path):
    path = tmp_path / "bomb.npz"
    npz_with_header(path, (1 << 40,), b"\0" * 16)  # np.load would preallocate 4 TiB here
    with pytest.raises(ModelFileError, match=r"array 'x' declares \(1099511627776,\) float32"):
        load_npz(path, "--dataset bomb.npz")


def test_objects_and_oversized_files_are_refused(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="plain numeric arrays"):
        load_npz(objects, "--dataset objects.npz")
    small = tmp_path / "small.npz"
    np.savez(small, x=np.ones(100, np.float32))
    with pytest.raises(ModelFileError, match="at most 64 bytes in all"):
        load_npz(small, "--dataset small.npz", max_bytes=64)
    with pytest.raises(ModelFileError, match="not a readable .npz"):
        load_npz(tmp_path / "missing.npz", "--dataset missing.npz")


def test_npy_reads_as_numpy_and_refuses_bombs_objects_and_size(tmp_path):
    good = tmp_path / "good.npy"
    np.save(good, np.arange(12, dtype=np.float32).reshape(3, 4))
    np.testing.assert_array_equal(load_npy(good, "--calibration good.npy"), np.load(good))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (1 << 40,)})
    bomb = tmp_path / "bomb.npy"
    bomb.write_bytes(header.getvalue() + b"\0" * 16)  # np.load would preallocate 4 TiB here
    with pytest.raises(ModelFileError, match=r"array 'bomb' declares \(1099511627776,\) float32"):
        load_npy(bomb, "--calibration bomb.npy")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ModelFileError, match="plain numeric arrays"):
        load_npy(objects, "--calibration objects.npy")
    with pytest.raises(ModelFileError, match="at most 64"):
        load_npy(good, "--calibration good.npy", max_bytes=64)
    with pytest.raises(ModelFileError, match="not a readable .npy"):
        load_npy(tmp_path / "missing.npy", "--calibration missing.npy")
