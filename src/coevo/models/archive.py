"""Rebuilding a generator from the tensors inside a ``.pt2`` or TorchScript archive, running nothing.

``torch.export.load`` and ``torch.jit.load`` execute what an archive holds (pickles, call
targets resolved by name, guard code, TorchScript programs). A model file of unknown origin
is therefore never handed to them unless the user says it is trusted (``--trust-model``).
Without that, coevo reads the archive as a zip of data:

* ``.pt2``: the program's own weights, ``<top>/data/weights/model_weights_config.json``
  (state_dict name -> raw little-endian storage file, dtype, sizes, strides), plus the
  architecture ``<top>/extra/coevo_arch.json`` when present (else inferred from the shapes);
* TorchScript: ``<top>/extra/coevo_weights.safetensors``, which coevo's exporter writes next
  to the program, plus ``<top>/extra/coevo_arch.json``. TorchScript files from elsewhere keep
  their weights in a pickle and load only when trusted.

and builds a :class:`ResnetGenerator` from them. Every entry is found by its exact name;
an archive with two entries of one name, two names that differ only in case, entries
outside one top folder, or entries whose sizes do not add up (zip bombs) is refused.
"""
from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch

from ..core.files import PathLike
from .generator import ResnetGenerator

ARCH_ENTRY = "extra/coevo_arch.json"
PROGRAM_ENTRY = "extra/coevo_program.json"
TS_WEIGHTS_ENTRY = "extra/coevo_weights.safetensors"
PT2_WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
PT2_WEIGHTS_DIR = "data/weights/"
# Far above any generator (the full ngf-64 ResNet holds 45 MB of fp32 weights), far below a machine's memory.
MAX_ENTRY_BYTES = 2 << 30
MAX_TOTAL_BYTES = 4 << 30
MAX_JSON_BYTES = 64 << 20
MAX_RATIO = 200  # uncompressed / compressed bytes of one entry; torch stores entries uncompressed
# torch.export's serialised ScalarType codes (torch/_export/serde/schema.py) that a generator's weights use
_PT2_DTYPES = {6: torch.float16, 7: torch.float32, 8: torch.float64, 13: torch.bfloat16}
_PT2_COUNTER = "num_batches_tracked"  # a BatchNorm's step counter, the one integer (int64, code 5) weight


class UntrustedArchiveError(ValueError):
    """An archive coevo will not read without trust; :mod:`coevo.models.io` turns it into a CheckpointError."""


class Archive:
    """The entries of a zip archive by exact name below its single top folder, with size limits.

    Opening refuses: duplicate entry names, names that differ only in case, absolute names or
    ``..`` parts, more than one top folder, an entry above :data:`MAX_ENTRY_BYTES`, a total above
    :data:`MAX_TOTAL_BYTES`, and a compression ratio above :data:`MAX_RATIO` (a zip bomb).
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        try:
            self._zip = zipfile.ZipFile(self.path)  # opened once: every entry is read through it
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise UntrustedArchiveError(f"{self.path} is not a readable zip archive ({e}); the file may be "
                                        "truncated or not an exported model") from e
        try:
            infos = self._zip.infolist()
            names = [i.filename for i in infos]
            self._check_names(names)
            tops = {n.split("/", 1)[0] for n in names}
            if len(tops) != 1 or any("/" not in n for n in names):
                raise UntrustedArchiveError(f"{self.path}: entries lie outside one top folder "
                                            f"({sorted(tops)[:4]}); not an archive torch writes")
            self.top = tops.pop()
            self._check_sizes(infos)
        except BaseException:
            self.close()
            raise
        self.infos: Dict[str, zipfile.ZipInfo] = {i.filename.split("/", 1)[1]: i for i in infos}

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> "Archive":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_names(self, names: List[str]) -> None:
        seen: Dict[str, str] = {}
        for n in names:
            if n.startswith("/") or "\\" in n or ".." in n.split("/"):
                raise UntrustedArchiveError(f"{self.path} holds an entry with an unsafe name ({n!r})")
            key = n.lower()
            if key in seen:
                kind = "twice" if seen[key] == n else f"as {seen[key]!r} and {n!r} (names differing only in case)"
                raise UntrustedArchiveError(f"{self.path} holds the entry {n!r} {kind}; a reader could pick "
                                            "either one, so coevo refuses the file")
            seen[key] = n

    def _check_sizes(self, infos: List[zipfile.ZipInfo]) -> None:
        total = 0
        for i in infos:
            total += i.file_size
            too_big = i.file_size > MAX_ENTRY_BYTES or total > MAX_TOTAL_BYTES
            bomb = i.file_size > (1 << 20) and i.file_size > MAX_RATIO * max(1, i.compress_size)
            if too_big or bomb:
                raise UntrustedArchiveError(
                    f"{self.path}: entry {i.filename!r} unpacks to {i.file_size} bytes from {i.compress_size} "
                    f"(archive total {total}); refusing what looks like a zip bomb")

    def __contains__(self, name: str) -> bool:
        return name in self.infos

    def read(self, name: str, limit: int = MAX_ENTRY_BYTES) -> bytes:
        info = self.infos.get(name)
        if info is None:
            raise UntrustedArchiveError(f"{self.path} has no entry {self.top}/{name}")
        if info.file_size > limit:
            raise UntrustedArchiveError(f"{self.path}: {self.top}/{name} is {info.file_size} bytes, over the "
                                        f"{limit}-byte limit for it")
        try:
            return self._zip.read(info)
        except (zipfile.BadZipFile, OSError, ValueError) as e:
            raise UntrustedArchiveError(f"cannot read {self.top}/{name} from {self.path} ({e}); the file may "
                                        "be truncated") from e

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name, MAX_JSON_BYTES))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise UntrustedArchiveError(f"{self.path}: {self.top}/{name} is not valid JSON ({e})") from e


def arch_from_dict(cls: Any, d: Any, path: PathLike) -> Any:
    """``cls.from_dict(d)`` for a :class:`GeneratorArch` or discriminator arch stored in a file; missing or
    malformed metadata is a CheckpointError naming the file."""
    from ..errors import CheckpointError

    try:
        return cls.from_dict(d)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        reason = f"no key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise CheckpointError(f"{path} has unusable architecture metadata ({reason}); the file is corrupt "
                              "or was not written by this coevo; re-save or re-export it") from e


def _arch(archive: Archive) -> Optional[Dict[str, Any]]:
    """The architecture dict stored by coevo's exporter, or None when the archive has none."""
    if ARCH_ENTRY not in archive or not archive.infos[ARCH_ENTRY].file_size:
        return None
    arch = archive.json(ARCH_ENTRY)
    if not isinstance(arch, dict):
        raise UntrustedArchiveError(f"{archive.path}: {archive.top}/{ARCH_ENTRY} is not an architecture "
                                    "(a JSON object)")
    return arch


def _int(value: Any, what: str, path: Path) -> int:
    """An ``{"as_int": n}`` of torch.export's schema as a non-negative int."""
    n = value.get("as_int") if isinstance(value, dict) else None
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise UntrustedArchiveError(f"{path}: weight {what} is not a fixed non-negative integer ({value!r})")
    return n


def _pt2_tensor(archive: Archive, name: str, entry: Mapping[str, Any]) -> torch.Tensor:
    """One weight of a .pt2 archive, from its raw storage and tensor_meta; no unpickling."""
    path = archive.path
    meta = entry.get("tensor_meta") if isinstance(entry, Mapping) else None
    file = entry.get("path_name") if isinstance(entry, Mapping) else None
    if entry.get("use_pickle") or not isinstance(meta, Mapping) or not isinstance(file, str) or "/" in file:
        raise UntrustedArchiveError(f"{path}: weight {name!r} is not stored as a raw tensor")
    dtype = _PT2_DTYPES.get(meta.get("dtype"))
    if dtype is None and name.endswith(_PT2_COUNTER) and meta.get("dtype") == 5:
        dtype = torch.int64
    if dtype is None:
        raise UntrustedArchiveError(f"{path}: weight {name!r} has dtype code {meta.get('dtype')!r}; a generator's "
                                    "weights are float16, bfloat16, float32 or float64")
    sizes = [_int(s, f"{name!r} size", path) for s in meta.get("sizes") or []]
    strides = [_int(s, f"{name!r} stride", path) for s in meta.get("strides") or []]
    offset = _int(meta.get("storage_offset"), f"{name!r} storage offset", path)
    data = archive.read(PT2_WEIGHTS_DIR + file)
    item = torch.empty((), dtype=dtype).element_size()
    if len(sizes) != len(strides) or len(data) % item:
        raise UntrustedArchiveError(f"{path}: weight {name!r} has inconsistent sizes, strides or storage")
    span = 1 + sum((n - 1) * s for n, s in zip(sizes, strides)) if all(sizes) else 0
    if offset + span > len(data) // item:
        raise UntrustedArchiveError(f"{path}: weight {name!r} reaches past its storage ({file})")
    storage = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
    return torch.as_strided(storage, sizes, strides, offset).contiguous()


def pt2_state_dict(archive: Archive) -> Dict[str, torch.Tensor]:
    """The state_dict a ``.pt2`` program stores as raw tensors (in float32)."""
    config = archive.json(PT2_WEIGHTS_CONFIG).get("config") if PT2_WEIGHTS_CONFIG in archive else None
    if not isinstance(config, dict) or not config:
        raise UntrustedArchiveError(f"{archive.path} holds no weights ({archive.top}/{PT2_WEIGHTS_CONFIG}); "
                                    "not a torch.export program of a generator")
    tensors = {str(k): _pt2_tensor(archive, str(k), v) for k, v in config.items()}
    return {k: t.float() if t.is_floating_point() else t for k, t in tensors.items()}


def torchscript_state_dict(archive: Archive) -> Dict[str, torch.Tensor]:
    """The safetensors copy of the weights coevo's TorchScript exporter stores next to the program."""
    from safetensors.torch import load as load_safetensors

    if TS_WEIGHTS_ENTRY not in archive:
        raise UntrustedArchiveError(
            f"{archive.path} is TorchScript without coevo's weight entry ({archive.top}/{TS_WEIGHTS_ENTRY}), so "
            "its weights could only be read by running the file; re-export it with `coevo export`, or pass "
            "--trust-model if you trust where it came from")
    try:
        sd = load_safetensors(archive.read(TS_WEIGHTS_ENTRY))
    except Exception as e:  # safetensors' own parse errors: a corrupt entry
        raise UntrustedArchiveError(f"{archive.path}: {archive.top}/{TS_WEIGHTS_ENTRY} is not valid "
                                    f"safetensors ({e})") from e
    return {k: v.float() for k, v in sd.items()}


def read_archive(path: PathLike, kind: str) -> tuple:
    """``(arch dict or None, state_dict)`` of a ``.pt2`` (``kind="pt2"``) or TorchScript archive; runs nothing."""
    with Archive(path) as archive:
        sd = pt2_state_dict(archive) if kind == "pt2" else torchscript_state_dict(archive)
        return _arch(archive), sd


def torchscript_weights_entry(model: ResnetGenerator) -> bytes:
    """The bytes of :data:`TS_WEIGHTS_ENTRY` for ``model``: its state_dict as safetensors (float32, CPU)."""
    from safetensors.torch import save as save_safetensors

    return save_safetensors({k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()})


__all__ = ["Archive", "UntrustedArchiveError", "read_archive", "torchscript_weights_entry"]
