"""The header of a safetensors file, checked against the file before anything trusts it.

A safetensors file is an 8-byte little-endian header length, a JSON header (`{key: {dtype, shape, data_offsets}}`
plus `__metadata__`) and the tensors' bytes. Rows are later read straight from the offsets the header gives
(`multimodal.storage.columns.LazyColumn`), so a header that lies would read a neighbouring tensor's bytes, or fail
epochs later on the first batch that touches a missing row. Everything is checked here, at open, as safetensors'
own loader does: the header's length (capped), its JSON, each tensor's dtype and shape against its byte range,
the ranges back to back in the file's order and ending exactly where the file ends. Every error is a
`CorruptFile` naming the file.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any

import torch

# safetensors dtype names <-> torch dtypes (those this project stores).
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}

MAX_HEADER_BYTES = 100_000_000  # safetensors' own cap: a length beyond it is damage, not a header to read

FIX = ("the file is damaged or was not written by this project; restore it (`dvc checkout`) or re-run the stage "
       "that writes it (`dvc repro --force <stage>`)")


class CorruptFile(ValueError):
    """A safetensors file whose bytes contradict themselves: truncated, a damaged header, offsets that lie."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}; {FIX}")
        self.path, self.problem = str(path), problem


def parse_header(path: Path | str) -> tuple[dict[str, Any], dict[str, dict[str, Any]], int]:
    """(metadata, {key: entry}, data start) of the safetensors file at `path`, every entry checked against the
    file (`CorruptFile` otherwise). An entry's `data_offsets` are relative to the data start."""
    with open(path, "rb") as handle:
        file_size = os.fstat(handle.fileno()).st_size
        if file_size < 8:
            raise CorruptFile(path, f"{file_size} bytes: too short for a safetensors header")
        (size,) = struct.unpack("<Q", handle.read(8))
        if size > MAX_HEADER_BYTES:
            raise CorruptFile(path, f"header length {size:,} bytes, over the {MAX_HEADER_BYTES:,} a safetensors "
                                    "header may have")
        if 8 + size > file_size:
            raise CorruptFile(path, f"truncated: its header is {size:,} bytes, the file holds {file_size - 8:,} "
                                    "after the length")
        raw = handle.read(size)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFile(path, f"header is not valid JSON ({err})") from None
    if not isinstance(header, dict):
        raise CorruptFile(path, f"header is a JSON {type(header).__name__}, not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CorruptFile(path, "__metadata__ is not a map of strings")
    for key, entry in header.items():
        _check_entry(path, key, entry)
    _check_layout(path, header, file_size - 8 - size)
    return metadata, header, 8 + size


def _check_entry(path: Path | str, key: str, entry: Any) -> None:
    """One tensor's entry: a known dtype, a shape with a row dimension, a byte range of exactly its size."""
    if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= set(entry):
        raise CorruptFile(path, f"tensor {key!r}: entry {entry!r} lacks dtype, shape or data_offsets")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise CorruptFile(path, f"tensor {key!r} has dtype {dtype!r}, which this project never stores")
    if not _ints(shape) or not shape:
        raise CorruptFile(path, f"tensor {key!r}: shape {shape!r} is not a list of sizes with a row dimension")
    if not _ints(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise CorruptFile(path, f"tensor {key!r}: data_offsets {offsets!r} is not a [begin, end] byte range")
    need = math.prod(shape) * DTYPES[dtype].itemsize
    if offsets[1] - offsets[0] != need:
        raise CorruptFile(path, f"tensor {key!r}: shape {shape} of {dtype} is {need:,} bytes, its data_offsets "
                                f"{offsets} span {offsets[1] - offsets[0]:,}")


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                            for v in values)


def _check_layout(path: Path | str, entries: dict[str, dict[str, Any]], data_size: int) -> None:
    """The tensors' byte ranges, in order, tile the data exactly: no gap, no overlap, nothing past the file's end
    (a truncated file) and nothing after the last (safetensors refuses both)."""
    end = 0
    for key, entry in sorted(entries.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        begin, stop = entry["data_offsets"]
        if begin != end:
            what = "overlaps the tensor before it" if begin < end else f"leaves {begin - end:,} bytes unused before it"
            raise CorruptFile(path, f"tensor {key!r}: data_offsets {entry['data_offsets']} {what} "
                                    f"(which ends at {end:,})")
        end = stop
    if end > data_size:
        raise CorruptFile(path, f"truncated: its tensors need {end:,} bytes of data, the file holds {data_size:,}")
    if end < data_size:
        raise CorruptFile(path, f"{data_size - end:,} bytes after the last tensor's data (a file appended to?)")


def metadata_json(path: Path | str, metadata: dict[str, str], key: str, default: str | None = None) -> Any:
    """The JSON value the metadata holds under `key` (`default` when absent; absent without one: `CorruptFile`)."""
    text = metadata.get(key, default)
    if text is None:
        raise CorruptFile(path, f"its metadata lacks {key!r}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise CorruptFile(path, f"metadata {key!r} is not valid JSON ({err})") from None
