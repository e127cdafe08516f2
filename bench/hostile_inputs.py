"""Hostile inputs are refused from what they declare, before they are read or decoded: time and peak memory.

Each case profiles one cell in a fresh process (`multimodal.data.profile.profile_cell`, what `validate` runs per row)
and
records its wall time, peak RSS (the process's own, over a bare interpreter that imported the same modules) and the
reason the row gets. A manifest far beyond `ingest.max_rows` is read the same way by `read_manifest`. Damaged shards
(a real 256-image shard, 38 MB, truncated, a header byte flipped, a shape that lies, a header length of 2^62) are
opened the way every later stage opens a split (`multimodal.storage.shards.split_columns`).

    python bench/hostile_inputs.py            # about a minute; writes a few hundred MB, one sparse 300 MB file
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the shard cases write shards with `multimodal`

# One case: profile `cell` of `modality` under the repo's validate params (with `overrides`) in a fresh process.
PROFILE = """
import json, resource, sys, time
from pathlib import Path
sys.path.insert(0, {repo!r})
from multimodal.modalities import get_modality
from multimodal.data.profile import profile_cell
from tests.unit.conftest import params_section
options = params_section("validate", **{overrides!r})
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
cell = Path({cell_file!r}).read_text()  # a 3 MB cell does not fit a command line
out = profile_cell(get_modality({modality!r}), cell, Path({root!r}), options)
print(json.dumps({{"s": time.perf_counter() - start, "base_mb": before / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "reason": out[{modality!r} + "_error"], "decodes": out[{modality!r} + "_decodes"]}}))
"""

MANIFEST = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from multimodal.data.manifest import ManifestError, read_manifest
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    read_manifest({path!r}, max_rows={cap})
    reason = ""
except ManifestError as err:
    reason = str(err)
print(json.dumps({{"s": time.perf_counter() - start, "base_mb": before / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "reason": reason,
                  "decodes": False}}))
"""

# One damaged shard: open its split as every stage does; the error (`CorruptFile`) is the reason.
SHARD = """
import json, resource, sys, time
sys.path.insert(0, {repo!r})
from multimodal.storage.header import CorruptFile
from multimodal.storage.shards import split_columns
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    split_columns({folder!r}, "test")
    reason = "(opened: nothing to refuse)"
except CorruptFile as err:
    reason = err.problem
print(json.dumps({{"s": time.perf_counter() - start, "base_mb": before / 1024,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "reason": reason,
                  "decodes": False}}))
"""


def png_claiming(width: int, height: int, bits: int = 8) -> bytes:
    """A real 1x1 PNG whose header claims `width` x `height` (CRC fixed): a decompression bomb's front."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 13] = struct.pack(">IIB", width, height, bits)
    data[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr:ihdr + 17])))
    return bytes(data)


def make_cases(root: Path) -> list[tuple[str, str, str, dict]]:
    """(case, modality, cell, validate overrides) with the files written under `root`."""
    import soundfile as sf
    from PIL import Image

    (root / "bomb.png").write_bytes(png_claiming(40000, 40000, bits=1))
    (root / "just_under.png").write_bytes(png_claiming(12900, 12900))  # 166 Mpx: under Pillow's 179 Mpx refusal
    big = np.random.default_rng(0).integers(0, 255, (9000, 9000), np.uint8)  # a real 81 Mpx picture, 77 MB decoded
    Image.fromarray(big).save(root / "real_81mpx.png", compress_level=1)
    sf.write(root / "long.wav", np.zeros(8000 * 600, np.int16), 8000, subtype="PCM_16")  # 10 min, 9.6 MB
    with (root / "huge.bin").open("wb") as handle:  # sparse: 300 MB declared, nothing written
        handle.truncate(300 * 2**20)
    (root / "wav_as.png").write_bytes((root / "long.wav").read_bytes()[:4096])
    return [
        ("PNG bomb header 40000x40000, 1-bit", "image", "bomb.png", {}),
        ("PNG header 12900x12900 (under Pillow's limit)", "image", "just_under.png", {}),
        ("real 9000x9000 PNG, 81 Mpx (max_pixels 50 M)", "image", "real_81mpx.png", {}),
        ("the same, max_pixels raised to 100 M: decoded", "image", "real_81mpx.png",
         {"modalities": {"image": {"max_pixels": 100_000_000}}}),
        ("WAV of 10 min (max_duration_s 60)", "audio", "long.wav", {}),
        ("300 MB file (max_file_mb 200)", "audio", "huge.bin", {}),
        ("WAV bytes named .png", "image", "wav_as.png", {}),
        ("3 MB text cell (max_chars 2000)", "text", "x" * 3_000_000, {}),
    ]


def shard_cases(root: Path) -> list[tuple[str, Path]]:
    """(case, folder holding one damaged `test-00000.safetensors`): a real shard of 256 224x224 images (uint8, as
    preprocess stores them) and 256 token rows, each folder a differently damaged copy."""
    import torch

    from multimodal.storage.codecs import PixelCodec
    from multimodal.storage.shards import ShardWriter

    clean = root / "shard-clean"
    writer = ShardWriter(clean, "test", 256)
    pixels = torch.randint(0, 256, (256, 3, 224, 224), dtype=torch.uint8)
    writer.add([f"s{i}" for i in range(256)], {"pixel_values": pixels, "input_ids": torch.randint(0, 30000, (256, 128))},
               {"pixel_values": PixelCodec(1 / 255, (0.5,) * 3, (0.5,) * 3)})
    writer.flush()
    data = (clean / "test-00000.safetensors").read_bytes()
    (size,) = struct.unpack("<Q", data[:8])
    header = data[8 : 8 + size]
    shape = header.index(b'"shape":[256,3,224', header.index(b'"pixel_values"')) + len('"shape":[256,')
    damaged = {
        "clean shard, 256 images (38 MB): opened": data,
        "the same, truncated by 1 KB": data[:-1024],
        "the same, truncated to half": data[: len(data) // 2],
        "a flipped bit in the header's JSON": data[:8] + bytes([header[0] ^ 1]) + data[9:],
        "a lying shape (3 channels read as 2)": data[: 8 + shape] + b"2" + data[9 + shape :],
        "a header length of 2^62": struct.pack("<Q", 2**62) + data[8:],
    }
    cases = []
    for i, (case, content) in enumerate(damaged.items()):
        (root / f"shard-{i}").mkdir()
        (root / f"shard-{i}" / "test-00000.safetensors").write_bytes(content)
        cases.append((case, root / f"shard-{i}"))
    return cases


def run(code: str) -> dict:
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"a case's process failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory(prefix="hostile-") as tmp:
        root = Path(tmp)
        for case, modality, cell, overrides in make_cases(root):
            (root / "cell.txt").write_text(cell)
            code = PROFILE.format(repo=str(REPO), overrides=overrides, modality=modality,
                                  cell_file=str(root / "cell.txt"), root=str(root))
            rows.append({"case": case, **run(code)})
        manifest = root / "manifest.csv"
        with manifest.open("w") as handle:
            handle.write("sample_id,label,text\n")
            handle.writelines(f"s{i},a,hello\n" for i in range(2_000_000))  # ~40 MB
        rows.append({"case": "manifest of 2,000,000 rows (ingest.max_rows 1,000)",
                     **run(MANIFEST.format(repo=str(REPO), path=str(manifest), cap=1000))})
        for case, folder in shard_cases(root):
            rows.append({"case": case, **run(SHARD.format(repo=str(REPO), folder=str(folder)))})
    print("| input | decoded | s | peak RSS MB (+ over the loaded interpreter) | the row's reason |")
    print("|---|---|---:|---:|---|")
    for r in rows:
        reason = r["reason"].replace("|", "/")[:110] or "(decoded; its row checks judge it, e.g. text_length)"
        print(f"| {r['case']} | {'yes' if r['decodes'] else 'no'} | {r['s']:.3f} | "
              f"{r['peak_mb']:.0f} (+{r['peak_mb'] - r['base_mb']:.0f}) | {reason} |")


if __name__ == "__main__":
    main()
