"""Checks that a model directory meets its architecture's contract, without loading tensors.

A directory passes when ``config.json`` carries every field of ``Architecture.config`` with the
same value, and its safetensors files (one or more, or an index plus shards) hold exactly
``Architecture.expected_tensors()`` with those shapes, in an allowed dtype. Only the 8-byte
header length and the JSON header of each file are read, so checking a 140 GB checkpoint costs
a few kilobytes of I/O.

:func:`find_problems` returns human-readable problems (empty when the directory is good);
:func:`is_model_file` says which file names belong in a model directory at all.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from turnout.registry.architectures import ALLOWED_DTYPES, Architecture

#: Files kept from a source besides safetensors weights and their index.
MODEL_SIDE_FILES: Final = frozenset(
    {
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "tokenizer.model",
        "chat_template.jinja",
    }
)
INDEX_SUFFIX: Final = ".safetensors.index.json"

#: Bytes per element of every dtype safetensors can store (to check data offsets).
_DTYPE_SIZES: Final = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
#: The safetensors format itself caps the header at 100 MB; larger means a corrupt length.
_MAX_HEADER: Final = 100 * 2**20
#: How many names a "missing"/"unexpected" problem lists before "and N more".
_SHOW: Final = 5
_SAFE_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def is_model_file(name: str) -> bool:
    """True for a top-level file name that belongs in a model directory."""
    if not _SAFE_NAME.match(name):
        return False
    return name in MODEL_SIDE_FILES or name.endswith((".safetensors", INDEX_SUFFIX))


@dataclass(frozen=True, slots=True)
class TensorInfo:
    file: str
    dtype: str
    shape: tuple[int, ...]


class _Corrupt(Exception):
    """A file that cannot be parsed; the message names what is wrong."""


def find_problems(model_dir: Path, arch: Architecture) -> list[str]:
    """Every way ``model_dir`` fails ``arch``'s contract; empty when it passes."""
    problems = _config_problems(model_dir / "config.json", arch)
    tensors, file_problems = _read_tensors(model_dir)
    problems += file_problems
    if tensors is not None:
        problems += _tensor_problems(tensors, arch)
    return problems


def _config_problems(path: Path, arch: Architecture) -> list[str]:
    try:
        config = json.loads(path.read_bytes())
    except FileNotFoundError:
        return ["config.json is missing; add the model's HF config.json"]
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"config.json is not valid JSON ({exc})"]
    if not isinstance(config, dict):
        return ["config.json must hold a JSON object"]
    problems = []
    for name, want in arch.config.items():
        if name not in config:
            problems.append(
                f"config.json: {name} is missing, architecture {arch.arch_id} needs {want!r}"
            )
        elif not _same_value(config[name], want):
            problems.append(
                f"config.json: {name} is {config[name]!r}, "
                f"architecture {arch.arch_id} needs {want!r}"
            )
    return problems


def _same_value(got: object, want: object) -> bool:
    # JSON true == 1 in Python; a config must carry the same JSON type, not just an equal value.
    if isinstance(want, bool) or isinstance(got, bool):
        return type(got) is type(want) and got == want
    if isinstance(want, int) and isinstance(got, float):
        return False
    return got == want


def _read_tensors(model_dir: Path) -> tuple[dict[str, TensorInfo] | None, list[str]]:
    """All tensors of the checkpoint by name, or None when the files cannot be read."""
    indexes = sorted(p.name for p in model_dir.glob("*" + INDEX_SUFFIX))
    if len(indexes) > 1:
        return None, [f"found several index files ({', '.join(indexes)}); keep one"]
    if indexes:
        return _read_indexed(model_dir, indexes[0])
    files = sorted(p.name for p in model_dir.glob("*.safetensors"))
    if not files:
        return None, [
            "no *.safetensors file found; Turnout accepts safetensors weights only "
            "(save with save_pretrained(..., safe_serialization=True))"
        ]
    return _read_files(model_dir, files)


def _read_files(
    model_dir: Path, files: Iterable[str]
) -> tuple[dict[str, TensorInfo] | None, list[str]]:
    tensors: dict[str, TensorInfo] = {}
    problems: list[str] = []
    for name in files:
        try:
            header = read_header(model_dir / name)
        except _Corrupt as exc:
            problems.append(f"{name}: {exc}")
            continue
        for tensor, info in header.items():
            if tensor in tensors:
                problems.append(f"{name}: tensor {tensor} is also in {tensors[tensor].file}")
            tensors[tensor] = info
    return (None if problems else tensors), problems


def _read_indexed(
    model_dir: Path, index_name: str
) -> tuple[dict[str, TensorInfo] | None, list[str]]:
    try:
        index = json.loads((model_dir / index_name).read_bytes())
        weight_map = index["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        return None, [f"{index_name} is not a valid index ({exc!r}); it needs a weight_map"]
    shards = sorted({str(s) for s in weight_map.values()})
    missing = [s for s in shards if not (model_dir / s).is_file() or not is_model_file(s)]
    if missing:
        return None, [
            f"{index_name} references {s}, which is missing; upload every shard" for s in missing
        ]
    stray = sorted(p.name for p in model_dir.glob("*.safetensors") if p.name not in shards)
    tensors, problems = _read_files(model_dir, shards)
    problems += [f"{s} is not referenced by {index_name}; remove it" for s in stray]
    if tensors is None:
        return None, problems
    for name, shard in weight_map.items():
        info = tensors.get(name)
        if info is not None and info.file != shard:
            problems.append(f"{index_name} puts {name} in {shard}, but it is in {info.file}")
    unlisted = sorted(set(tensors) - set(weight_map))
    if unlisted:
        problems.append(f"{index_name} does not list {_some(unlisted)}")
    return tensors, problems


def read_header(path: Path) -> dict[str, TensorInfo]:
    """Parse one safetensors header; raise ``_Corrupt`` naming what is wrong."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise _Corrupt(f"truncated: {size} bytes is too short for a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > _MAX_HEADER or 8 + length > size:
            raise _Corrupt(
                f"truncated or corrupt: header length {length} runs past the end of the "
                f"file ({size} bytes); upload the file again"
            )
        raw = fh.read(length)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Corrupt(f"corrupt: the header is not valid JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _Corrupt("corrupt: the header is not a JSON object")
    data_size = size - 8 - length
    return {
        name: _tensor_info(path.name, name, entry, data_size)
        for name, entry in header.items()
        if name != "__metadata__"
    }


def _tensor_info(file: str, name: str, entry: object, data_size: int) -> TensorInfo:
    if not isinstance(entry, dict):
        raise _Corrupt(f"corrupt: header entry for {name} is not an object")
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if (
        not isinstance(dtype, str)
        or not isinstance(shape, list)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
    ):
        raise _Corrupt(f"corrupt: header entry for {name} lacks dtype/shape/data_offsets")
    begin, end = offsets
    if not 0 <= begin <= end or end > data_size:
        raise _Corrupt(
            f"truncated or corrupt: tensor {name} needs bytes {begin}..{end} but the file "
            f"holds {data_size} bytes of data; upload the file again"
        )
    itemsize = _DTYPE_SIZES.get(dtype)
    if itemsize is not None and end - begin != math.prod(shape) * itemsize:
        raise _Corrupt(f"corrupt: tensor {name} has {end - begin} bytes for shape {shape} {dtype}")
    return TensorInfo(file, dtype, tuple(shape))


def _tensor_problems(tensors: dict[str, TensorInfo], arch: Architecture) -> list[str]:
    expected = arch.expected_tensors()
    problems = []
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        problems.append(f"missing tensors for architecture {arch.arch_id}: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors for architecture {arch.arch_id}: {_some(unexpected)}")
    for name in sorted(set(expected) & set(tensors)):
        info = tensors[name]
        if info.shape != expected[name]:
            problems.append(
                f"{info.file}: tensor {name} has shape {list(info.shape)}, "
                f"architecture {arch.arch_id} needs {list(expected[name])}"
            )
        if info.dtype not in ALLOWED_DTYPES:
            problems.append(
                f"{info.file}: tensor {name} is {info.dtype}; "
                f"allowed dtypes are {', '.join(sorted(ALLOWED_DTYPES))}"
            )
    return problems


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:_SHOW])
    return shown if len(names) <= _SHOW else f"{shown} and {len(names) - _SHOW} more"
