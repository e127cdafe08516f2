"""`python -m stages.serve` on a real local Ray Serve, bound to 127.0.0.1, asked by a real HTTP client (httpx): the
answers are predict's for the same inputs, any subset of modalities; a PNG bomb and a WAV whose header lies are
refused with a reason and the next request is answered. One server for the module (Ray Serve starts slowly)."""

from __future__ import annotations

import csv
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import pandas as pd
import pytest

from stages.predict import main as predict_main
from tests.integration.ray_head import free_port
from tests.unit.shipping.test_predict import LABELS
from tests.unit.shipping.tiny_model import build_tiny_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> tuple[str, Path, Path]:
    """(base URL, dataset folder, model folder) of a server running the tiny model, stopped by SIGTERM after."""
    tmp = tmp_path_factory.mktemp("serve")
    dataset, model_dir, _ = build_tiny_model(tmp)
    port = free_port()
    log = (tmp / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "stages.serve", "--model", str(model_dir), "--port", str(port), "--threads", "1",
         "--params", str(REPO / "params.yaml")],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert process.poll() is None, (tmp / "serve.log").read_text()[-3000:]
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
            time.sleep(1)
        yield url, dataset, model_dir
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # its own session: the server and the Ray it started
        try:
            process.wait(timeout=15)  # a clean Serve shutdown takes longer on a loaded machine; nothing to keep
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()


def post(url: str, dataset: Path, cells: dict[str, str]) -> httpx.Response:
    files = {m: (Path(c).name, (dataset / c).read_bytes()) for m, c in cells.items() if m in ("image", "audio") and c}
    data = {"text": cells["text"]} if cells.get("text") else {}
    return httpx.post(f"{url}/predict", files=files or None, data=data, timeout=60)


def test_answers_are_predicts_for_any_subset_of_modalities(server, tmp_path):
    url, dataset, model_dir = server
    cells = [{"image": "img/3.png", "audio": "wav/3.wav", "text": "blue sky above 3"},
             {"image": "img/5.png", "audio": "", "text": ""},
             {"image": "", "audio": "wav/6.wav", "text": ""},
             {"image": "", "audio": "", "text": "green grass grows tall"},
             {"image": "img/1.png", "audio": "wav/2.wav", "text": ""}]
    manifest = dataset / "asked.csv"
    pd.DataFrame([{"sample_id": f"r{i}", **c} for i, c in enumerate(cells)]).to_csv(manifest, index=False)
    predict_main(["--model", str(model_dir), "--manifest", str(manifest), "--out", str(tmp_path / "p.csv"),
                  "--device", "cpu"])
    with (tmp_path / "p.csv").open(newline="") as handle:
        expected = list(csv.DictReader(handle))
    assert httpx.get(f"{url}/healthz").json()["modalities"] == ["image", "audio", "text"]
    for row, want in zip(cells, expected):
        answer = post(url, dataset, row)
        assert answer.status_code == 200, answer.text
        got = answer.json()
        assert got["predicted"] == want["predicted"]
        assert got["modalities_used"] == want["modalities_used"].split("+")
        assert got["errors"] == {} and got["error"] == want["error"] == ""
        assert got["probabilities"] == pytest.approx({c: float(want[f"p_{c}"]) for c in LABELS}, abs=1e-6)


def png_bomb() -> bytes:
    """A PNG whose header claims 100000 x 100000 pixels (validate.modalities.image.max_pixels is 50 M)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def lying_wav(real: bytes) -> bytes:
    """`real` (a 0.25 s PCM WAV) whose header says 2 Hz: it promises 2000 s (validate allows 60), so it is refused
    from the header before a sample is decoded."""
    at = real.index(b"fmt ") + 12  # chunk id, chunk size, format tag, channels: then the sample rate
    return real[:at] + struct.pack("<I", 2) + real[at + 4:]


def test_bad_files_are_refused_with_a_reason_and_the_server_keeps_serving(server):
    url, dataset, _ = server
    bomb = httpx.post(f"{url}/predict", files={"image": ("bomb.png", png_bomb())}, data={"text": "seven"})
    assert bomb.status_code in (413, 422) and "pixels" in bomb.json()["error"], bomb.text
    liar = httpx.post(f"{url}/predict", files={"audio": ("liar.wav", lying_wav((dataset / "wav/1.wav").read_bytes()))})
    assert liar.status_code in (413, 422) and "header promises" in liar.json()["error"], liar.text
    nothing = httpx.post(f"{url}/predict", data={"colour": "red"})
    assert nothing.status_code == 422 and "colour" in nothing.json()["error"]
    novel = httpx.post(f"{url}/predict", data={"text": "word " * 401})  # validate.modalities.text.max_chars: 2000
    assert novel.status_code == 413 and "2005 characters" in novel.json()["error"], novel.text
    empty = httpx.post(f"{url}/predict", data={"text": ""})
    assert empty.status_code == 422 and "no input" in empty.json()["error"]
    after = post(url, dataset, {"image": "img/3.png", "text": "red apples"})
    assert after.status_code == 200 and after.json()["modalities_used"] == ["image", "text"]
