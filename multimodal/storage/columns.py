"""Columns of rows read on demand from safetensors files, and a safetensors file written row block by row block.

A `LazyColumn` stands for an (N, ...) tensor whose rows live in one or more files (the shards of a split, or the
features `align` cached): it holds only where each row is (file, byte offset, row) and reads the rows a batch asks
for when it is indexed. Reads use `os.preadv` into the batch's own buffer, not `mmap`: the pages of a mapped file
that an epoch touches count in the process's RSS (as shared file pages) until the kernel reclaims them, so a mapped
split would show a resident set as large as the file; a plain read leaves those pages to the page cache, which is
not the process's memory. Contiguous rows of one file are read in one call.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from multimodal.storage.codecs import Codec, codec_from_meta
from multimodal.storage.header import DTYPES, CorruptFile, metadata_json, parse_header



@dataclass(frozen=True)
class Segment:
    """One tensor of one safetensors file: `rows` rows of `row_shape`, row 0 at byte `offset`."""

    path: str
    offset: int
    rows: int
    row_shape: tuple[int, ...]
    stored_dtype: torch.dtype
    codec: Codec | None

    @property
    def dtype(self) -> torch.dtype:
        return self.codec.dtype if self.codec is not None else self.stored_dtype

    @property
    def row_bytes(self) -> int:
        return int(torch.Size(self.row_shape).numel()) * self.stored_dtype.itemsize

    @property
    def form(self) -> tuple[torch.dtype, Codec | None]:
        return self.stored_dtype, self.codec

    def read_into(self, rows: torch.Tensor, destination: Any, at: torch.Tensor) -> None:
        """Stored rows `rows` into the rows `at` of `destination` (a 2-D uint8 numpy view of a stored-dtype
        buffer). Each run of consecutive rows is one `preadv` scattering straight into the destination rows."""
        if not len(rows) or not self.row_bytes:
            return
        if int(rows.min()) < 0 or int(rows.max()) >= self.rows:
            raise IndexError(f"{self.path}: rows {int(rows.min())}..{int(rows.max())} outside 0..{self.rows - 1}")
        order = torch.argsort(rows, stable=True)
        rows, at = rows[order].tolist(), at[order].tolist()
        fd = os.open(self.path, os.O_RDONLY)
        try:
            start = 0
            for end in range(1, len(rows) + 1):
                if end == len(rows) or rows[end] != rows[end - 1] + 1 or end - start == IOV_MAX:
                    _read_exactly(fd, [memoryview(destination[i]) for i in at[start:end]],
                                  self.offset + rows[start] * self.row_bytes, self.path)
                    start = end
        finally:
            os.close(fd)


IOV_MAX = 1024  # buffers per preadv call (Linux's limit)


def _read_exactly(fd: int, views: list[memoryview], offset: int, path: str) -> None:
    """Fill `views` from consecutive bytes at `offset`, however many calls that takes."""
    while views:
        got = os.preadv(fd, views, offset)
        if got == 0:
            raise EOFError(f"{path}: truncated (wanted {sum(len(v) for v in views)} more bytes at offset {offset})")
        offset += got
        while views and got >= len(views[0]):
            got -= len(views[0])
            views = views[1:]
        if views and got:
            views = [views[0][got:], *views[1:]]


class LazyColumn:
    """An (N, ...) column read on demand: `column[index]` (a LongTensor, bool mask, slice, list or int; a tuple
    indexes the rows read further) reads and
    decodes those rows; rows absent from every file (`segment_of == -1`) are zeros, as a dense split holds them.
    `take(index)` is another lazy column of those rows (nothing read)."""

    def __init__(self, segments: Sequence[Segment], segment_of: torch.Tensor, row_of: torch.Tensor):
        if not segments:
            raise ValueError("a lazy column needs at least one segment (its row shape and dtype)")
        shapes = {(s.row_shape, s.dtype) for s in segments}
        if len(shapes) > 1:
            raise ValueError(f"segments of one column differ in row shape or dtype: {sorted(map(str, shapes))} "
                             f"({segments[0].path}, ...)")
        self.segments, self.segment_of, self.row_of = list(segments), segment_of.long(), row_of.long()

    def __len__(self) -> int:
        return len(self.segment_of)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self.segments[0].row_shape))

    @property
    def dtype(self) -> torch.dtype:
        return self.segments[0].dtype

    def dim(self) -> int:
        return len(self.shape)

    def _index(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice):
            return torch.arange(len(self))[index]
        index = torch.as_tensor(index)
        return index.nonzero().flatten() if index.dtype == torch.bool else index.long()

    def take(self, index: Any) -> "LazyColumn":
        index = self._index(index)
        return LazyColumn(self.segments, self.segment_of[index], self.row_of[index])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, tuple):  # rows first, the rest applied to the rows read: column[rows, :width]
            return self[index[0]][(slice(None), *index[1:])]
        if isinstance(index, int):
            return self[torch.tensor([index])][0]
        index = self._index(index)
        where = self.segment_of[index]
        forms: dict[tuple, list[int]] = {}
        for segment in torch.unique(where[where >= 0]).tolist():
            forms.setdefault(self.segments[segment].form, []).append(segment)
        out = torch.zeros((len(index), *self.shape[1:]), dtype=self.dtype) if len(forms) != 1 else None
        for (stored_dtype, codec), segments in forms.items():
            # One buffer for every row of the batch in this stored form, decoded in one go.
            at = torch.nonzero(torch.isin(where, torch.tensor(segments))).flatten() if out is not None else None
            count = len(index) if at is None else len(at)
            stored = torch.empty((count, *self.shape[1:]), dtype=stored_dtype)
            rows_view = stored.view(count, -1).view(torch.uint8).numpy()
            for segment in segments:
                mine = torch.nonzero(where == segment).flatten()
                places = mine if at is None else torch.searchsorted(at, mine)
                self.segments[segment].read_into(self.row_of[index[mine]], rows_view, places)
            decoded = codec.decode(stored) if codec is not None else stored
            if out is not None:
                out[at] = decoded
            else:
                out = decoded
                out[where < 0] = 0  # rows absent from every file: zeros, whatever the codec's offset
        return out

    def materialize(self) -> torch.Tensor:
        """Every row in memory: only where a whole column is needed and small (token ids, features)."""
        return self[:]

    def __repr__(self) -> str:
        return f"LazyColumn(shape={tuple(self.shape)}, dtype={self.dtype}, files={len(self.segments)})"


def concat_rows(columns: Sequence[torch.Tensor | LazyColumn]) -> torch.Tensor | LazyColumn:
    """Columns stacked row-wise: a lazy column when any is lazy (nothing read), else `torch.cat`."""
    if not any(isinstance(c, LazyColumn) for c in columns):
        return torch.cat(list(columns))
    segments, segment_of, row_of = [], [], []
    for column in columns:
        if not isinstance(column, LazyColumn):
            raise TypeError("cannot stack an in-memory tensor with a lazy column; take batches of both instead")
        segment_of.append(torch.where(column.segment_of >= 0, column.segment_of + len(segments), -1))
        row_of.append(column.row_of)
        segments += column.segments
    return LazyColumn(segments, torch.cat(segment_of), torch.cat(row_of))


def absent_like(column: torch.Tensor | LazyColumn, n: int) -> torch.Tensor | LazyColumn:
    """`n` rows of zeros shaped like `column`'s rows (lazy for a lazy column: nothing is allocated)."""
    if isinstance(column, LazyColumn):
        return LazyColumn(column.segments, torch.full((n,), -1), torch.zeros(n, dtype=torch.long))
    return column.new_zeros((n, *column.shape[1:]))


# --- safetensors files ---------------------------------------------------------------------------------------


def read_header(path: Path) -> tuple[dict[str, str], dict[str, Segment]]:
    """(metadata, {key: Segment}) of a safetensors file, from its header alone (no tensor is read), the header
    checked against the file first (`multimodal.storage.header`: `CorruptFile`, naming the file, when it lies).

    Keys listed in the metadata's `codecs` (JSON, written by `ShardWriter`) are decoded on read."""
    metadata, header, data_start = parse_header(path)
    stored_forms = metadata_json(path, metadata, "codecs", "{}")
    try:
        codecs = {k: codec_from_meta(v) for k, v in stored_forms.items()}
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise CorruptFile(path, f"metadata 'codecs' is not a map of stored forms ({err!r})") from None
    # An absolute path: a Ray trial changes its working directory after the data is loaded.
    where = str(Path(path).resolve())
    segments = {key: Segment(where, data_start + entry["data_offsets"][0], entry["shape"][0],
                             tuple(entry["shape"][1:]), DTYPES[entry["dtype"]], codecs.get(key))
                for key, entry in header.items()}
    return metadata, segments


def header_bytes(metadata: dict[str, str], tensors: dict[str, tuple[torch.dtype, tuple[int, ...]]]) -> tuple[bytes, int]:
    """The length prefix and JSON header of a safetensors file holding `tensors` ({key: (dtype, shape)}, data in
    sorted key order) and `metadata`; returns it and the size of the data after it.

    Keys are written sorted: safetensors' own `save_file` orders `__metadata__` entries as a Rust hash map does,
    differently in every process, so two runs writing the same shard would give different bytes (and DVC hashes).
    """
    names = {v: k for k, v in DTYPES.items()}
    entries, offset = {}, 0
    for key in sorted(tensors):
        dtype, shape = tensors[key]
        size = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        entries[key] = {"dtype": names[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    header = json.dumps({"__metadata__": dict(sorted(metadata.items())), **entries}, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(header)) + header, offset


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """A safetensors file (readable by `safetensors.load_file`) whose bytes depend only on its contents."""
    header, _ = header_bytes(metadata, {k: (v.dtype, tuple(v.shape)) for k, v in tensors.items()})
    with open(path, "wb") as handle:
        handle.write(header)
        for key in sorted(tensors):
            handle.write(tensors[key].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())


class RowFile:
    """A safetensors file of float32 (N, width) tensors written in row blocks, in any order.

    The header is known up front (N rows, each key's width), so it is written first and the file extended to its
    full size (unwritten rows read as zeros); `write` then puts each block at its offset. Nothing holds (N, width)
    in memory, and safetensors' `load_file` reads the result like any other file.
    """

    def __init__(self, path: Path, widths: dict[str, int], n: int, metadata: dict[str, str]):
        header, size = header_bytes(metadata, {key: (torch.float32, (n, widths[key])) for key in widths})
        self.path = Path(path)
        with open(self.path, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + size)
        _, self.segments = read_header(self.path)

    def write(self, key: str, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Rows `rows` (increasing) of `key` set to `values` (len(rows), width); each run of consecutive rows is
        one write."""
        segment = self.segments[key]
        if values.shape != (len(rows), *segment.row_shape):
            raise ValueError(f"{self.path}: {key} rows have shape {tuple(segment.row_shape)}, got "
                             f"{tuple(values.shape[1:])}")
        data = values.detach().to(torch.float32).contiguous().view(torch.uint8).numpy()
        breaks = (torch.nonzero(rows.diff() != 1).flatten() + 1).tolist()
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for start, end in zip([0, *breaks], [*breaks, len(rows)]):
                view, at = memoryview(data[start:end]).cast("B"), segment.offset + int(rows[start]) * segment.row_bytes
                while len(view):
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
        finally:
            os.close(fd)

    def column(self, key: str) -> LazyColumn:
        n = self.segments[key].rows
        return LazyColumn([self.segments[key]], torch.zeros(n, dtype=torch.long), torch.arange(n))
