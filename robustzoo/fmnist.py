"""Fashion-MNIST for the embedded CPU zoo and the demo: the full set from disk, or the shipped subset.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017; Zalando Research, MIT licence) is 70,000 28x28
grey-level images of 10 clothing classes. Its small size lets this project train, fine-tune and
attack real models on a 2-core CPU, so the tiny ``*-fmnist`` zoo and ``robustzoo demo`` run the
paper's pipeline (Chen et al., CVPR 2020: pretext pretraining -> adversarial fine-tuning) on real
data with no download.

* :func:`load_fashion_mnist` reads the original IDX ``.gz`` files, as installed by the Debian
  package ``dataset-fashion-mnist`` at ``/usr/share/datasets/fashion-mnist`` (or any ``root``),
  and checks their sha256 against the values recorded below.
* :func:`load_embedded` reads the class-balanced subset shipped in ``robustzoo/_data/`` (10,000
  train + 2,000 test images, uint8, ``.npz`` read with ``allow_pickle=False``) and checks the
  sha256 of its array contents. ``benchmarks/make_fmnist_subset.py`` rebuilds it bit-for-bit.

Both return ``(x, y)``: ``x`` float32 in [0, 1] of shape (N, 1, 28, 28), ``y`` int64 in 0..9.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ._download import file_sha256
from .errors import DataError

__all__ = ["CLASSES", "DEFAULT_ROOT", "FILES", "EMBEDDED", "load_fashion_mnist", "load_embedded", "content_sha256"]

CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
# sha256 of the original files (Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1, the upstream release).
FILES = {
    "train": (
        ("train-images-idx3-ubyte.gz", "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
        ("train-labels-idx1-ubyte.gz", "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ),
    "test": (
        ("t10k-images-idx3-ubyte.gz", "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
        ("t10k-labels-idx1-ubyte.gz", "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
    ),
}
# The embedded subset: file name, images per class, and sha256 of content_sha256(images, labels).
# The .npz container itself is not hashed: zip timestamps make its bytes differ between rebuilds.
EMBEDDED = {
    "train": ("fmnist_train_10k.npz", 1000, "22e93f8fd71eac130e84511dd224f04617be7552cdc9845be04e75575a2b67bc"),
    "test": ("fmnist_test_2k.npz", 200, "e16833d31d89dfbda472e8254a79720158b45e0c5016b1a5065467e5582cc1aa"),
}
_INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or pass root= a folder "
    "holding the four original *-ubyte.gz files from https://github.com/zalandoresearch/fashion-mnist"
)


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise DataError(f"split must be 'train' or 'test', got {split!r}")
    return split


def _read_idx(raw: bytes, ndim: int, path: Path) -> np.ndarray:
    """Parse an IDX file (big-endian header: 0, 0, dtype 0x08 = uint8, ndim, then the dims)."""
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise DataError(f"{path} is not a uint8 IDX file with {ndim} dimensions")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, body has {len(body)} bytes")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return x, torch.from_numpy(labels.astype(np.int64))


def read_raw(split: str = "train", root: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The original uint8 images (N, 28, 28) and labels (N,) after checking every file's sha256."""
    split = _split(split)
    root = Path(root) if root is not None else Path(os.environ.get("ROBUSTZOO_FMNIST_ROOT", DEFAULT_ROOT))
    arrays = []
    for (fname, expected), ndim in zip(FILES[split], (3, 1)):
        path = root / fname
        if not path.is_file():
            raise DataError(f"Fashion-MNIST file {path} not found; {_INSTALL_HINT}")
        got = file_sha256(path)
        if got != expected:
            raise DataError(f"{path} has sha256 {got}, expected {expected}: the file is corrupt or not the original")
        try:
            raw = gzip.decompress(path.read_bytes())
        except (OSError, EOFError) as exc:
            raise DataError(f"{path} is not a readable gzip file: {exc}") from None
        arrays.append(_read_idx(raw, ndim, path))
    images, labels = arrays
    if len(images) != len(labels) or labels.max() > 9:
        raise DataError(f"{root}: {len(images)} images but {len(labels)} labels (max label {labels.max()})")
    return images, labels


def load_fashion_mnist(
    split: str = "train", root: str | os.PathLike | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full Fashion-MNIST ``split`` (60,000 train or 10,000 test images) from the IDX files.

    Args:
        split: ``"train"`` or ``"test"``.
        root: folder with the original ``*-ubyte.gz`` files; default ``$ROBUSTZOO_FMNIST_ROOT`` or
            ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).

    Returns:
        ``(x, y)``: float32 images in [0, 1], shape (N, 1, 28, 28), and int64 labels.

    Raises:
        DataError: files missing (with the install command), corrupt (sha256 mismatch) or malformed.
    """
    return _to_tensors(*read_raw(split, root))


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 over the uint8 image bytes then the uint8 label bytes (C order): a container-free hash."""
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(images, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def embedded_path(split: str) -> Path:
    """Where the shipped subset file for ``split`` lives inside the package."""
    return Path(__file__).resolve().parent / "_data" / EMBEDDED[_split(split)][0]


def load_embedded(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """The class-balanced Fashion-MNIST subset shipped with the package (no file outside it needed).

    ``"train"`` has 10,000 images (1,000 per class) drawn from the 60,000 training images,
    ``"test"`` 2,000 (200 per class) from the 10,000 test images, by
    ``benchmarks/make_fmnist_subset.py`` (seed 0).

    Returns:
        ``(x, y)`` as :func:`load_fashion_mnist`.

    Raises:
        DataError: the file is missing or its contents do not match the recorded sha256.
    """
    fname, per_class, expected = EMBEDDED[_split(split)]
    path = embedded_path(split)
    if not path.is_file():
        raise DataError(f"embedded Fashion-MNIST subset {path} is missing; reinstall robustzoo or run "
                        "`python benchmarks/make_fmnist_subset.py`")
    try:
        with np.load(path, allow_pickle=False) as npz:
            images, labels = npz["images"], npz["labels"]
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"{path} is not a valid subset file: {exc}") from None
    got = content_sha256(images, labels)
    if got != expected:
        raise DataError(f"{path} contents have sha256 {got}, expected {expected}: the file is corrupt")
    return _to_tensors(images, labels)
