"""A shard whose bytes contradict its header is refused when the split is opened, naming the file: truncated,
a damaged header byte, a shape or byte range that lies, a header length past any sane size."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from multimodal.storage.header import MAX_HEADER_BYTES, CorruptFile
from multimodal.storage.shards import ShardWriter, split_columns

IDS = [f"s{i}" for i in range(5)]
PIXELS = torch.arange(5 * 2 * 3, dtype=torch.float32).reshape(5, 2, 3)
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0]])


@pytest.fixture
def shard(tmp_path):
    """One valid shard of two tensors (`attention_mask` stored first as int32, then `pixel_values`)."""
    writer = ShardWriter(tmp_path, "test", shard_size=8)
    writer.add(IDS, {"pixel_values": PIXELS, "attention_mask": MASK})
    writer.flush()
    return tmp_path / "test-00000.safetensors"


def parts(path):
    data = path.read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def rewrite(path, header, body):
    """`header` (a dict) written back with its length, padded to 8 bytes as safetensors writes it."""
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)


def refused(path, *phrases):
    """Opening the split fails at once with `CorruptFile`, naming the file and each phrase."""
    with pytest.raises(CorruptFile) as caught:
        split_columns(path.parent, "test")
    message = str(caught.value)
    assert str(path) in message and "dvc checkout" in message, message
    for phrase in phrases:
        assert phrase in message, message


def test_the_valid_shard_reads_back(shard):
    ids, columns = split_columns(shard.parent, "test")
    assert ids == IDS and torch.equal(columns["pixel_values"][:], PIXELS)
    assert torch.equal(columns["attention_mask"][:], MASK)


@pytest.mark.parametrize("cut", [1, 24, 100])
def test_a_truncated_shard_is_refused_at_open_not_at_the_first_batch_touching_the_missing_rows(shard, cut):
    shard.write_bytes(shard.read_bytes()[:-cut])
    refused(shard, "truncated")


def test_a_shard_cut_inside_its_header_is_refused(shard):
    shard.write_bytes(shard.read_bytes()[:40])
    refused(shard, "truncated")


def test_a_flipped_header_byte_breaking_the_json_is_refused_naming_the_file(shard):
    data = bytearray(shard.read_bytes())
    data[8] ^= 0x01  # the header's opening brace
    shard.write_bytes(bytes(data))
    refused(shard, "not valid JSON")


@pytest.mark.parametrize("digit", ["shape", "data_offsets"])
def test_a_flipped_digit_in_a_shape_or_offset_is_refused(shard, digit):
    """One bit of one digit: a shape of 5 rows read as 4 (or an offset moved) would read a neighbour's bytes."""
    data = bytearray(shard.read_bytes())
    at = data.index(b'"pixel_values":{')
    at = data.index(f'"{digit}":['.encode(), at) + len(digit) + 4
    data[at] ^= 0x01  # '5' <-> '4', '0' <-> '1', ...: still a number
    shard.write_bytes(bytes(data))
    refused(shard, "'pixel_values'")


def test_a_lying_shape_is_refused_before_a_row_reads_the_next_tensor(shard):
    header, body = parts(shard)
    header["attention_mask"]["shape"] = [5, 6]  # twice the columns: its rows would run into pixel_values' bytes
    header["attention_mask"]["data_offsets"][1] *= 2
    rewrite(shard, header, body)
    refused(shard, "'pixel_values'", "overlaps")


def test_a_shape_that_disagrees_with_its_byte_range_is_refused(shard):
    header, body = parts(shard)
    header["pixel_values"]["shape"] = [5, 2, 2]
    rewrite(shard, header, body)
    refused(shard, "'pixel_values'", "span 120")


def test_bytes_appended_after_the_data_are_refused(shard):
    shard.write_bytes(shard.read_bytes() + b"\0" * 16)
    refused(shard, "16 bytes after")


@pytest.mark.parametrize("length", [MAX_HEADER_BYTES + 1, 2**62])
def test_an_oversized_header_length_is_refused_before_it_is_read(shard, length):
    shard.write_bytes(struct.pack("<Q", length) + shard.read_bytes()[8:])
    refused(shard, "over the 100,000,000")


@pytest.mark.parametrize("metadata", [{"codecs": "{"}, {"codecs": '{"attention_mask": 3}'}, {"sample_ids": "[1, 2]"},
                                      {"sample_ids": None}])
def test_damaged_metadata_is_refused_naming_the_file(shard, metadata):
    header, body = parts(shard)
    header["__metadata__"].update(metadata)
    header["__metadata__"] = {k: v for k, v in header["__metadata__"].items() if v is not None}
    rewrite(shard, header, body)
    refused(shard)
