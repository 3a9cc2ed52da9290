"""Sharded checkpoint folders (FSDP2: torch.distributed.checkpoint files + Lightning's meta.pt), read as data.

torch reads a folder's `.metadata` with a plain `pickle.load`, and any non-tensor entry of the state with
`torch.load(weights_only=False)`: either would run code a stranger put in the folder. kslm therefore checks a folder
before torch (or Lightning, resuming under fsdp2) reads it:

- `.metadata` is unpickled by `SafeMetadataUnpickler`, which builds only torch's checkpoint-metadata types (and the
  torch sizes, dtypes, layouts and paths inside them) — any other global is refused;
- every storage entry must name a plain file of the folder (no `/`, no `..`) and lie inside it;
- every non-tensor ("bytes") entry must load with `torch.load(weights_only=True)` — then the unrestricted load torch
  makes of the same bytes builds the same plain objects;
- meta.pt is read with weights_only=True.
A folder that fails any check is a one-line CheckpointError, and nothing of it was executed.
"""

import io
import pickle
from pathlib import Path

import torch

from kslm.errors import CheckpointError

META = "meta.pt"  # Lightning's name for the non-tensor part of a sharded checkpoint folder
METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards
MAX_METADATA_BYTES = 256 << 20

_DCP_TYPES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "TensorStorageMetadata", "BytesStorageMetadata",
                                              "ChunkStorageMetadata", "TensorProperties", "StorageMeta",
                                              "MetadataIndex", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.distributed.checkpoint._extension": {"StreamTransformExtension", "ZStandard"},
    "pathlib": {"Path", "PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"},
    "collections": {"OrderedDict"},
    "torch._utils": {"_get_layout"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
}


class SafeMetadataUnpickler(pickle.Unpickler):
    """A pickle reader that builds torch.distributed.checkpoint's metadata and nothing else."""

    def find_class(self, module, name):
        if name in _DCP_TYPES.get(module, ()):
            return getattr(__import__(module, fromlist=[name]), name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.memory_format, torch.layout)):
            return getattr(torch, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint's metadata")


def is_sharded(path) -> bool:
    """A sharded checkpoint (ModelParallelStrategy / FSDP2): a folder of torch.distributed.checkpoint files + meta.pt."""
    p = Path(str(path))
    return p.is_dir() and (p / META).is_file()


def read_metadata(folder: Path):
    """The folder's `.metadata`, unpickled safely and checked against the folder's files (a CheckpointError if not)."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata

    path = folder / METADATA
    if not path.is_file():
        raise CheckpointError(f"{folder}: a sharded checkpoint without its {METADATA} file")
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise CheckpointError(f"{path}: larger than {MAX_METADATA_BYTES >> 20} MiB: not a checkpoint's metadata")
    try:
        with path.open("rb") as f:
            meta = SafeMetadataUnpickler(f).load()
    except Exception as exc:  # refused globals, torn pickles, wrong constructor arguments
        raise CheckpointError(f"{path}: not a checkpoint's metadata ({_first_line(exc)})") from None
    if not isinstance(meta, Metadata) or not isinstance(meta.state_dict_metadata, dict) or \
            not isinstance(meta.storage_data, dict):
        raise CheckpointError(f"{path}: not a checkpoint's metadata (a {type(meta).__name__})")
    sizes = {}
    for index, info in meta.storage_data.items():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
            raise CheckpointError(f"{path}: a shard outside the folder ({name!r})")
        if name not in sizes:
            shard = folder / name
            if not shard.is_file() or shard.is_symlink():
                raise CheckpointError(f"{folder}: the shard {name} is missing")
            sizes[name] = shard.stat().st_size
        offset, length = getattr(info, "offset", None), getattr(info, "length", None)
        if not (isinstance(offset, int) and isinstance(length, int) and 0 <= offset and 0 <= length
                and offset + length <= sizes[name]):
            raise CheckpointError(f"{path}: an entry outside its shard {name}")
        if isinstance(meta.state_dict_metadata.get(getattr(index, "fqn", None)), BytesStorageMetadata):
            _check_bytes(folder / name, offset, length, index.fqn)
    return meta


def _check_bytes(shard: Path, offset: int, length: int, fqn: str) -> None:
    """A non-tensor entry torch will unpickle without restriction must be plain data (weights_only loads it)."""
    with shard.open("rb") as f:
        f.seek(offset)
        data = f.read(length)
    try:
        torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{shard}: the entry {fqn} is not plain data ({_first_line(exc)})") from None


def read_sharded(folder: Path, keys=("state_dict",)) -> dict:
    """meta.pt plus the entries `keys` of the sharded state, gathered whole in this process (no process group)."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

    checked = read_metadata(folder)  # before anything else of the folder is read: a refusal names the metadata

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            return checked  # (read and checked once, above)

    class Planner(_EmptyStateDictLoadPlanner):
        def load_bytes(self, read_item, value):  # torch's own is weights_only=False
            self.state_dict[read_item.dest_index.fqn] = torch.load(value, map_location="cpu", weights_only=True)

    try:
        meta = torch.load(folder / META, map_location="cpu", weights_only=True)
        state: dict = {}
        _load_state_dict(state, storage_reader=Reader(str(folder)), planner=Planner(keys=set(keys)), no_dist=True)
    except CheckpointError:
        raise
    except Exception as exc:  # a missing shard, a torn .metadata, a foreign pickle
        raise CheckpointError(f"{folder}: cannot read sharded checkpoint ({_first_line(exc)})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{folder}: not a Lightning checkpoint ({META} holds a {type(meta).__name__})")
    return {**meta, **state}


def holds_optimizer(folder) -> bool:
    """Whether a sharded checkpoint folder holds optimiser state (Lightning stores it as optimizer_0, …)."""
    try:
        names = read_metadata(Path(str(folder))).state_dict_metadata
    except CheckpointError:
        return False
    return any(k.startswith("optimizer_") for k in names)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


__all__ = ["is_sharded", "read_metadata", "read_sharded", "holds_optimizer", "SafeMetadataUnpickler", "META"]
