"""The model behind HTTP on Ray Serve: `POST /predict` (multipart: a file per file modality, text as a form field,
any subset) answers what `predict` writes for the same inputs, as JSON; `GET /healthz`.

A request is checked before any model work, with the validate stage's header-first bounds: its size against
`validate.max_file_mb` per file (from Content-Length, before the body is read: 413), each file against the same
modality `probe` validate runs (`validate.modalities.<m>`: a picture's pixel count and an audio header's promised
duration are refused before decoding; a file that does not decode is refused too: 422, with the reason; a text
outside `min_chars..max_chars`: 413 when longer, 422 when shorter). What passes
is read, processed and predicted by `multimodal.shipping.predict` (the same readers and backend as the command),
requests batched by `@serve.batch`. Clients send files and text, never pickles; nothing a client sends is unpickled.
"""


import asyncio
import logging
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from starlette.datastructures import UploadFile

from multimodal.modalities import get_modality
from multimodal.shipping.backends import load_backend
from multimodal.shipping.predict import build_readers, predict_batch, read_batch

logger = logging.getLogger(__name__)

MAX_BATCH = 16  # requests predicted together
BATCH_WAIT_S = 0.01  # how long the first request of a batch waits for others
_CHUNK = 1 << 20
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}$")

app = FastAPI(title="multimodal model", docs_url=None, redoc_url=None, openapi_url=None)


class Refused(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


@dataclass(frozen=True)
class Bounds:
    """The validate stage's bounds: bytes per file, and each modality's checks (`validate.modalities.<m>`)."""

    max_file_bytes: int
    checks: dict[str, Any]  # modality -> its `Modality.checks` model

    @classmethod
    def from_validate(cls, max_file_mb: float, sections: dict[str, Any]) -> "Bounds":
        return cls(int(max_file_mb * 1e6), dict(sections))


def as_json(row: list[Any], labels: list[str], errors: list[str], modalities: list[str] = ()) -> dict[str, Any]:
    """One output row of `predict_batch` (with a contribution per modality of `modalities`) as the JSON answer;
    `errors` keyed by the modality each message names."""
    predicted = row[1] or None
    shares = row[2 + len(labels):2 + len(labels) + len(modalities)]
    return {"predicted": predicted,
            "probabilities": dict(zip(labels, row[2:2 + len(labels)])) if predicted else None,
            "contributions": {m: v for m, v in zip(modalities, shares) if v != ""} if predicted else None,
            "modalities_used": row[-2].split("+") if row[-2] else [],
            "errors": {message.split(" ", 1)[0]: message for message in errors},
            "error": row[-1]}


def _renamed(message: str, names: dict[str, str]) -> str:
    for cell, client in names.items():
        message = message.replace(repr(cell), repr(client))
    return message


@serve.deployment(max_ongoing_requests=64)
@serve.ingress(app)
class ModelServer:
    """One replica: the backend (PyTorch or onnxruntime), the readers, and a spool folder for uploaded files."""

    def __init__(self, model_dir: str | None, onnx_dir: str | None, bounds: Bounds, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        self.backend = load_backend(Path(model_dir) if model_dir else None, Path(onnx_dir) if onnx_dir else None,
                                    torch.device("cpu"), threads)
        self.readers = build_readers(self.backend)
        self.bounds = bounds
        self.spool = Path(tempfile.mkdtemp(prefix="serve-"))

    @app.get("/healthz")
    async def healthz(self) -> dict[str, Any]:
        return {"status": "ok", "labels": self.backend.labels, "modalities": self.backend.modalities}

    @app.post("/predict")
    async def predict(self, request: Request) -> JSONResponse:
        folder = self.spool / uuid.uuid4().hex
        try:
            cells = await self._receive(request, folder)
            return JSONResponse(await self._batched((folder.name, cells)))
        except Refused as refused:
            return JSONResponse({"error": refused.reason}, status_code=refused.status)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    async def _receive(self, request: Request, folder: Path) -> dict[str, tuple[str, str]]:
        """{modality: (cell, what the client called it)} of a request that passed the bounds; files land in
        `folder`, named by modality (a client's file name never becomes a path)."""
        files = [m for m in self.backend.modalities if get_modality(m).reads_file]
        length = request.headers.get("content-length")
        if length is None:
            raise Refused(411, "send a Content-Length: the request size is checked before its body is read")
        limit = self.bounds.max_file_bytes * max(len(files), 1) + (1 << 20)  # files, text and multipart framing
        if int(length) > limit:
            raise Refused(413, f"request of {int(length)} bytes; at most {limit} (validate.max_file_mb "
                               f"{self.bounds.max_file_bytes / 1e6:g} MB per file)")
        form = await request.form(max_files=len(files), max_fields=len(self.backend.modalities))
        unknown = sorted(set(form) - set(self.backend.modalities))
        if unknown:
            raise Refused(422, f"unknown field(s) {unknown}; the model reads {self.backend.modalities}")
        if not any(form.get(m) not in (None, "") for m in self.backend.modalities):
            raise Refused(422, f"no input: send any of {self.backend.modalities} (files as files, text as a field)")
        folder.mkdir()
        cells = {}
        for modality in self.backend.modalities:
            value = form.get(modality)
            if value in (None, ""):
                continue
            reads_file = get_modality(modality).reads_file
            if reads_file != isinstance(value, UploadFile):
                raise Refused(422, f"{modality}: send {'a file' if reads_file else 'a form field, not a file'}")
            if reads_file:
                cells[modality] = (await self._spool(modality, value, folder), value.filename or modality)
            else:
                cells[modality] = (str(value), modality)
            await asyncio.to_thread(self._probe, modality, cells[modality][0], folder)
        return cells

    async def _spool(self, modality: str, upload: UploadFile, folder: Path) -> str:
        suffix = _SUFFIX.search(upload.filename or "")
        name = modality + (suffix.group(0).lower() if suffix else "")
        written = 0
        with (folder / name).open("wb") as handle:
            while chunk := await upload.read(_CHUNK):
                written += len(chunk)
                if written > self.bounds.max_file_bytes:
                    raise Refused(413, f"{modality}: file over {self.bounds.max_file_bytes / 1e6:g} MB "
                                       "(validate.max_file_mb)")
                handle.write(chunk)
        return f"{folder.name}/{name}"

    def _probe(self, modality: str, cell: str, folder: Path) -> None:
        """validate's probe of the cell: header-first bounds, then a full decode (a file that lies is refused)."""
        mod, checks = get_modality(modality), self.bounds.checks.get(modality)
        if checks is None:
            return
        if not mod.reads_file and hasattr(checks, "max_chars"):  # text: the length validate's row check allows
            chars, low, high = len(cell), checks.min_chars, checks.max_chars
            if not low <= chars <= high:
                raise Refused(413 if chars > high else 422, f"{modality}: {chars} characters; validate allows "
                                                            f"{low}..{high} (validate.modalities.{modality})")
        try:
            if mod.reads_file:
                with (self.spool / cell).open("rb") as source:
                    mod.probe(source, checks)
            else:
                mod.probe(cell, checks)
        except Exception as err:  # noqa: BLE001 - whatever the decoder raises, the file is refused with its reason
            raise Refused(422, f"{modality}: refused by validate's checks: {type(err).__name__}: {err}") from None

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _batched(self, requests: list[tuple[str, dict[str, tuple[str, str]]]]) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self._predict, requests)

    def _predict(self, requests: list[tuple[str, dict[str, tuple[str, str]]]]) -> list[dict[str, Any]]:
        """predict's reading and prediction of a batch of requests: one manifest row each, rooted at the spool."""
        frame = pd.DataFrame([{"sample_id": rid, **{m: cells.get(m, ("", ""))[0] for m in self.backend.modalities}}
                              for rid, cells in requests])
        data, errors = read_batch(frame, self.readers, self.spool)
        rows = predict_batch(self.backend, data, errors)
        out = []
        for (_, cells), row, messages in zip(requests, rows, errors):
            named = {cell: client for m, (cell, client) in cells.items()  # spool names back to the client's
                     if get_modality(m).reads_file}
            messages = [_renamed(m, named) for m in messages]
            out.append(as_json([_renamed(str(v), named) if i == len(row) - 1 else v for i, v in enumerate(row)],
                               self.backend.labels, messages, self.backend.modalities))
        return out

