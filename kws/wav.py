"""WAV and raw PCM input/output for keyword spotting: any common WAV becomes float32 mono at 16 kHz.

A small RIFF parser (not ``wave``, which refuses float and extensible WAVs) so every bad file gets
a message naming the file and what is valid, and a header cannot make us read more than a limit.
"""

from __future__ import annotations

import math
import struct
import sys
import wave
from pathlib import Path

import numpy as np

from edgepack.errors import EdgepackError
from edgepack.kws.labels import SAMPLE_RATE

MAX_SECONDS = 600.0  # default bound on the audio a header may claim (10 minutes)
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_STREAMED = 0x7FFFF000  # the data size sox and espeak-ng write when they cannot seek back (or 0xFFFFFFFF)
_VALID = "a RIFF/WAVE file with 8/16/24/32-bit PCM or 32/64-bit float samples, 1-64 channels, 1-384 kHz"


class WavError(EdgepackError):
    """A WAV file or PCM stream that is empty, truncated, not WAV, or has an unsupported format."""


def read_wav(path, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Read ``path`` as float32 mono in [-1, 1] at ``sample_rate`` (channels averaged, other rates
    resampled); refuse bad files and headers claiming more than ``max_seconds`` with a ``WavError``."""
    rate, channels, kind, bits, data = _parse_file(path, max_seconds)
    audio = _decode(data, kind, bits).reshape(-1, channels)
    audio = audio.mean(axis=1, dtype=np.float64) if channels > 1 else audio[:, 0].astype(np.float64)
    if rate != sample_rate:
        audio = resample(audio, rate, sample_rate)
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def _parse_file(path, max_seconds: float):
    """_parse on the file at ``path``; an unreadable file is a WavError too."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return _parse(f, path, max_seconds)
    except OSError as e:
        raise WavError(f"{path}: cannot read: {e.strerror or e}") from e


def wav_info(path, max_seconds: float = MAX_SECONDS) -> dict:
    """The header of ``path`` (sample_rate, channels, bits, format, frames) after the same checks as
    ``read_wav``, without decoding the samples."""
    rate, channels, kind, bits, data = _parse_file(path, max_seconds)
    return {"sample_rate": rate, "channels": channels, "bits": bits,
            "format": "float" if kind == _FLOAT else "pcm", "frames": len(data) // (channels * bits // 8)}


def resample(audio: np.ndarray, rate: int, sample_rate: int) -> np.ndarray:
    """Resample 1-D ``audio`` from ``rate`` to ``sample_rate`` Hz with a polyphase filter (FFT
    resampling when the rational factors are too large for a short filter)."""
    from scipy.signal import resample as fft_resample
    from scipy.signal import resample_poly

    g = math.gcd(int(rate), int(sample_rate))
    up, down = sample_rate // g, rate // g
    if max(up, down) <= 1000:
        return resample_poly(audio, up, down)
    return fft_resample(audio, int(round(len(audio) * sample_rate / rate)))


def write_wav(path, audio, sample_rate: int = SAMPLE_RATE) -> None:
    """Write ``audio`` (float in [-1, 1], shape [frames] or [frames, channels]) as 16-bit PCM WAV."""
    audio = np.asarray(audio, dtype=np.float64)
    if audio.ndim not in (1, 2) or not np.all(np.isfinite(audio)):
        raise WavError(f"{path}: audio to write must be a finite 1-D or [frames, channels] array, "
                       f"got shape {audio.shape}")
    pcm = np.round(np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if audio.ndim == 1 else audio.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())


def read_pcm16(stream=None, max_seconds: float = MAX_SECONDS, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read raw signed 16-bit little-endian mono PCM from a binary ``stream`` (default stdin) to its
    end, as float32 in [-1, 1); refuse more than ``max_seconds`` or an odd number of bytes."""
    stream = _binary(stream)
    limit = int(max_seconds * sample_rate) * 2
    data = stream.read(limit + 2)
    if len(data) > limit:
        raise WavError(f"raw PCM on {_name(stream)}: more than {max_seconds:g} s of 16-bit audio "
                       f"at {sample_rate} Hz; pass a larger max_seconds or a shorter stream")
    return _pcm16(data, stream)


def iter_pcm16(stream=None, block_samples: int = 320):
    """Yield raw s16le mono PCM from ``stream`` (default stdin) as float32 blocks of
    ``block_samples`` (the last one may be shorter), for streaming detection."""
    stream = _binary(stream)
    while True:
        data = stream.read(block_samples * 2)
        if not data:
            return
        while len(data) < block_samples * 2:  # pipes return short reads
            more = stream.read(block_samples * 2 - len(data))
            if not more:
                break
            data += more
        yield _pcm16(data, stream)


def _binary(stream):
    if stream is None:
        stream = sys.stdin
    return getattr(stream, "buffer", stream)


def _name(stream) -> str:
    return str(getattr(stream, "name", "stream"))


def _pcm16(data: bytes, stream) -> np.ndarray:
    if len(data) % 2:
        raise WavError(f"raw PCM on {_name(stream)}: {len(data)} bytes is not a whole number of 16-bit "
                       "samples; expected signed 16-bit little-endian mono PCM")
    return (np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0)


def _parse(f, path: Path, max_seconds: float):
    """Walk the RIFF chunks of ``f``; return (rate, channels, kind, bits, data bytes)."""
    size = path.stat().st_size
    head = f.read(12)
    if not head:
        raise WavError(f"{path}: empty file; expected {_VALID}")
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        what = "a big-endian RIFX file" if head[:4] == b"RIFX" else "not a WAV file (no RIFF/WAVE header)"
        raise WavError(f"{path}: {what}; expected {_VALID}")
    fmt = None
    while True:
        chunk = f.read(8)
        if len(chunk) < 8:
            missing = "'fmt ' chunk" if fmt is None else "'data' chunk"
            raise WavError(f"{path}: truncated or incomplete WAV: no {missing}; expected {_VALID}")
        cid, csize = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if cid == b"fmt ":
            body = f.read(csize + (csize & 1))
            if len(body) < csize:
                raise WavError(f"{path}: truncated inside the 'fmt ' chunk; expected {_VALID}")
            fmt = _check_fmt(body[:csize], path)
        elif cid == b"data":
            if fmt is None:
                raise WavError(f"{path}: 'data' chunk before the 'fmt ' chunk; expected {_VALID}")
            rate, channels, kind, bits = fmt
            frame = channels * bits // 8
            left = size - f.tell()
            if csize >= _STREAMED:  # a WAV written to a pipe (espeak-ng, sox): the data runs to the end
                csize = left
            if csize > left:
                raise WavError(f"{path}: truncated: the header promises {csize} bytes of audio but only "
                               f"{left} follow; re-export or re-download the file")
            csize -= csize % frame
            if csize == 0:
                raise WavError(f"{path}: no audio samples (empty 'data' chunk)")
            seconds = csize / frame / rate
            if seconds > max_seconds:
                raise WavError(f"{path}: {seconds:.1f} s of audio is more than the limit of {max_seconds:g} s; "
                               "pass a larger max_seconds or cut the file")
            data = f.read(csize)
            if len(data) < csize:
                raise WavError(f"{path}: truncated: expected {csize} bytes of audio, read {len(data)}")
            return rate, channels, kind, bits, data
        else:
            if f.tell() + csize > size:
                raise WavError(f"{path}: truncated: chunk {cid!r} runs past the end of the file")
            f.seek(csize + (csize & 1), 1)


def _check_fmt(body: bytes, path: Path):
    """Validate a 'fmt ' chunk; return (rate, channels, kind, bits)."""
    if len(body) < 16:
        raise WavError(f"{path}: 'fmt ' chunk of {len(body)} bytes is too short (16 needed); expected {_VALID}")
    tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == _EXTENSIBLE:
        if len(body) < 26:
            raise WavError(f"{path}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short; expected {_VALID}")
        tag = struct.unpack("<H", body[24:26])[0]
    ok_bits = {_PCM: (8, 16, 24, 32), _FLOAT: (32, 64)}.get(tag)
    if ok_bits is None:
        raise WavError(f"{path}: unsupported sample format {tag} (1 = PCM and 3 = float are supported; "
                       "compressed WAVs such as A-law, mu-law or ADPCM are not); expected " + _VALID)
    if bits not in ok_bits:
        raise WavError(f"{path}: {bits}-bit {'PCM' if tag == _PCM else 'float'} samples are not supported; "
                       f"expected {_VALID}")
    if not 1 <= channels <= 64:
        raise WavError(f"{path}: {channels} channels in the header; expected {_VALID}")
    if not 1000 <= rate <= 384000:
        raise WavError(f"{path}: sample rate {rate} Hz in the header; expected {_VALID}")
    if align != channels * bits // 8:
        raise WavError(f"{path}: block align {align} does not match {channels} channels × {bits} bits; "
                       f"the header is corrupt; expected {_VALID}")
    return rate, channels, tag, bits


def _decode(data: bytes, kind: int, bits: int) -> np.ndarray:
    """Interleaved samples as float64 in [-1, 1]."""
    if kind == _FLOAT:
        x = np.frombuffer(data, dtype="<f4" if bits == 32 else "<f8").astype(np.float64)
        return np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    if bits == 8:
        return (np.frombuffer(data, dtype=np.uint8).astype(np.float64) - 128.0) / 128.0
    if bits == 16:
        return np.frombuffer(data, dtype="<i2").astype(np.float64) / 32768.0
    if bits == 24:
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        x = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        return np.where(x >= 1 << 23, x - (1 << 24), x).astype(np.float64) / float(1 << 23)
    return np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0
