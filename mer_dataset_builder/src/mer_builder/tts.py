"""Speech synthesis with espeak-ng through ctypes (the `espeakng-loader` package ships the library and data).

The library keeps global state, so one process holds one engine (`engine()`), used under a lock.
Synthesis is synchronous: `espeak_Synth` returns once the callback has received every int16 sample.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass

import numpy as np

AUDIO_OUTPUT_SYNCHRONOUS = 2
INITIALIZE_DONT_EXIT = 0x8000
POS_CHARACTER = 1
CHARS_UTF8 = 1
# espeak_PARAMETER
RATE, VOLUME, PITCH, RANGE, WORDGAP = 1, 2, 3, 4, 7


class TTSError(RuntimeError):
    """espeak-ng could not be loaded or refused a request (one line)."""


@dataclass(frozen=True)
class Prosody:
    """espeak-ng parameters: rate in words/min (80-450), volume 0-200, pitch 0-100 (base), range 0-100
    (pitch variation), wordgap in 10 ms units."""

    rate: int = 175
    volume: int = 100
    pitch: int = 50
    range: int = 50
    wordgap: int = 0

    def clipped(self) -> Prosody:
        return Prosody(
            rate=int(np.clip(self.rate, 80, 450)),
            volume=int(np.clip(self.volume, 0, 200)),
            pitch=int(np.clip(self.pitch, 0, 100)),
            range=int(np.clip(self.range, 0, 100)),
            wordgap=int(np.clip(self.wordgap, 0, 50)),
        )


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),
    ]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


class Espeak:
    """One initialised espeak-ng library. Use `engine()` rather than building a second one in a process."""

    def __init__(self) -> None:
        try:
            import espeakng_loader

            lib = ctypes.CDLL(espeakng_loader.get_library_path())
            data = espeakng_loader.get_data_path()
        except (ImportError, OSError, RuntimeError) as exc:
            raise TTSError(f"cannot load espeak-ng from espeakng-loader: {exc}") from exc
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
            ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), INITIALIZE_DONT_EXIT)
        if rate <= 0:
            raise TTSError(f"espeak_Initialize failed with data path {data}")
        self.sample_rate: int = rate
        self._lib = lib
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self._lock = threading.Lock()

    def seed(self, value: int) -> None:
        """Seed espeak-ng's own random source (voicing noise) where the library exports the setter."""
        setter = getattr(self._lib, "espeak_ng_SetRandSeed", None)
        if setter is not None:
            setter.argtypes = [ctypes.c_long]
            with self._lock:
                setter(int(value))

    def _collect(self, wav, n: int, _events) -> int:
        if n > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0

    def synth(self, text: str, voice: str = "en", prosody: Prosody | None = None) -> np.ndarray:
        """Speak `text` with `voice` (`en-us+f2`: language + variant) and `prosody`; int16 at `sample_rate`."""
        p = (prosody or Prosody()).clipped()
        data = text.encode("utf-8") + b"\0"
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise TTSError(f"espeak-ng has no voice {voice!r}")
            for param, value in ((RATE, p.rate), (VOLUME, p.volume), (PITCH, p.pitch), (RANGE, p.range),
                                 (WORDGAP, p.wordgap)):
                self._lib.espeak_SetParameter(param, value, 0)
            self._chunks = []
            err = self._lib.espeak_Synth(data, len(data), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
            if err != 0:
                raise TTSError(f"espeak_Synth failed (error {err}) for text {text[:40]!r}")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)


_ENGINE: Espeak | None = None
_ENGINE_LOCK = threading.Lock()


def engine() -> Espeak:
    """The process's espeak-ng engine, initialised on first use."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None:
            _ENGINE = Espeak()
        return _ENGINE
