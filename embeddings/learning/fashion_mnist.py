"""Fashion-MNIST from its four standard IDX files (gzip-compressed or not), or from ``keras.datasets``.

IDX (LeCun's MNIST format): two zero bytes, a type code (0x08 unsigned byte ... 0x0E double), the number
of dimensions, each dimension as a big-endian 32-bit integer, then the values, big-endian, row-major.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """An IDX file that is missing, truncated or not IDX; the message names the file and what is wrong."""


class DownloadError(RuntimeError):
    """``keras.datasets`` could not download Fashion-MNIST; the message says how to use local files."""


@dataclass
class FashionMnist:
    """Images (N x 28 x 28, uint8) and labels (N, 0-9) of the training and test sets."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """The array an IDX byte string holds.

    Raises:
        IdxError: a bad magic number, an unknown type, or fewer (or more) bytes than the header says.
    """
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IdxError(f"{name}: not an IDX file (bad magic {data[:4].hex() or 'none'}; "
                       f"expected 0000 then type and rank)")
    code, rank = data[2], data[3]
    if code not in _TYPES:
        raise IdxError(f"{name}: unknown IDX type code 0x{code:02x}; expected one of "
                       f"{', '.join(f'0x{c:02x}' for c in _TYPES)}")
    header = 4 + 4 * rank
    if len(data) < header:
        raise IdxError(f"{name}: truncated: the header needs {header} bytes, the file has {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=rank, offset=4))
    dtype = np.dtype(_TYPES[code])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise IdxError(f"{name}: {what}: shape {'x'.join(map(str, shape))} needs {expected} bytes, "
                       f"the file has {len(data)}")
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file; a ``.gz`` name is decompressed.

    Raises:
        FileNotFoundError: no such file.
        IdxError: corrupt gzip stream or bad IDX content, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: IDX file does not exist")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise IdxError(f"{path}: not a complete gzip file ({error})") from None
    return parse_idx(raw, str(path))


def _find(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{folder}: no {stem}.gz (the four Fashion-MNIST IDX files are expected here)")


def read_fashion_mnist(folder: str | Path) -> FashionMnist:
    """The four standard files from ``folder``, checked for shapes and matching counts.

    Raises:
        FileNotFoundError, IdxError.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: Fashion-MNIST folder does not exist")
    arrays = {key: read_idx(_find(folder, stem)) for key, stem in FILES.items()}
    for side in ("train", "test"):
        images, labels = arrays[f"{side}_images"], arrays[f"{side}_labels"]
        if images.ndim != 3 or labels.ndim != 1:
            raise IdxError(f"{folder}: {side} images must be N x H x W and labels N, got shapes "
                           f"{images.shape} and {labels.shape}")
        if len(images) != len(labels):
            raise IdxError(f"{folder}: {len(images)} {side} images but {len(labels)} labels")
    return FashionMnist(**{key: np.asarray(value) for key, value in arrays.items()})


def load_fashion_mnist(folder: str | Path | None = None) -> FashionMnist:
    """From ``folder``'s IDX files, or (without one) through ``keras.datasets.fashion_mnist`` (downloads once).

    Raises:
        FileNotFoundError, IdxError: a bad folder.
        DownloadError: the download failed; the message says how to use local files instead.
    """
    if folder is not None:
        return read_fashion_mnist(folder)
    import keras

    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.fashion_mnist.load_data()
    except Exception as error:  # Keras raises a bare Exception when the download fails
        raise DownloadError(f"could not download Fashion-MNIST ({str(error).splitlines()[0][:160]}); on a machine "
                           f"without internet pass --fashion-mnist DIR with the four IDX files "
                           f"({', '.join(f + '.gz' for f in FILES.values())})") from None
    return FashionMnist(train_x, train_y, test_x, test_y)
