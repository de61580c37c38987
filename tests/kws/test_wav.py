"""kws.wav: WAV round trips against scipy.io.wavfile, resampling, channel mixing, raw PCM, bad files."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from scipy.io import wavfile
from scipy.signal import resample_poly

from edgepack.errors import EdgepackError
from edgepack.kws.wav import WavError, iter_pcm16, read_pcm16, read_wav, wav_info, write_wav


def _tone(n=16000, rate=16000, freq=440.0):
    t = np.arange(n) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.mark.parametrize("dtype,scale", [(np.int16, 32768.0), (np.int32, 2147483648.0), (np.uint8, None),
                                         (np.float32, 1.0)])
def test_read_matches_scipy(tmp_path, dtype, scale):
    x = _tone()
    if dtype is np.uint8:
        data = np.round(x * 127 + 128).astype(np.uint8)
        expected = (data.astype(np.float64) - 128) / 128
    elif dtype is np.float32:
        data, expected = x, x
    else:
        data = np.round(x * (scale - 1)).astype(dtype)
        expected = data / scale
    wavfile.write(tmp_path / "a.wav", 16000, data)
    got = read_wav(tmp_path / "a.wav")
    assert got.dtype == np.float32 and got.shape == (16000,)
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_24_bit(tmp_path):
    ints = np.array([0, 1, -1, 8388607, -8388608, 123456, -654321], dtype=np.int32)
    raw = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 48000, 3, 24)
    body = b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    (tmp_path / "a.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    rate, ref = wavfile.read(tmp_path / "a.wav")  # scipy returns 24-bit left-aligned in int32
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), ref / 2.0 ** 31, atol=1e-7)
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), ints / 2.0 ** 23, atol=1e-7)


def test_write_round_trip_matches_scipy(tmp_path):
    x = _tone() * 1.9  # clipped to [-1, 1] when written
    write_wav(tmp_path / "a.wav", x)
    rate, data = wavfile.read(tmp_path / "a.wav")
    assert rate == 16000 and data.dtype == np.int16
    np.testing.assert_array_equal(data, np.round(np.clip(x, -1, 1) * 32767).astype(np.int16))
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), np.clip(x, -1, 1), atol=1 / 16000)


def test_other_rate_is_resampled(tmp_path):
    x = _tone(44100, 44100, 300.0)
    wavfile.write(tmp_path / "a.wav", 44100, x)
    got = read_wav(tmp_path / "a.wav")
    assert got.shape == (16000,)
    np.testing.assert_allclose(got, resample_poly(x.astype(np.float64), 160, 441), atol=1e-6)
    inner = slice(200, -200)  # away from the filter's edge effects: still a 300 Hz tone
    np.testing.assert_allclose(got[inner], _tone(16000, 16000, 300.0)[inner], atol=2e-3)


def test_three_channels_are_mixed(tmp_path):
    x = np.stack([_tone(), -_tone() * 0.5, np.full(16000, 0.25, np.float32)], axis=1)
    wavfile.write(tmp_path / "a.wav", 16000, x)
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), x.mean(axis=1), atol=1e-7)
    assert wav_info(tmp_path / "a.wav")["channels"] == 3


def test_extensible_float(tmp_path):
    x = _tone(800)
    guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    fmt = struct.pack("<HHIIHH", 0xFFFE, 1, 16000, 64000, 4, 32) + struct.pack("<HHI", 22, 32, 4) + guid
    raw = x.astype("<f4").tobytes()
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(raw)) + raw
    (tmp_path / "a.wav").write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    np.testing.assert_allclose(read_wav(tmp_path / "a.wav"), wavfile.read(tmp_path / "a.wav")[1], atol=0)


def _valid_bytes(tmp_path):
    write_wav(tmp_path / "ok.wav", _tone(1600))
    return (tmp_path / "ok.wav").read_bytes()


@pytest.mark.parametrize("name,make,needle", [
    ("empty", lambda b: b"", "empty file"),
    ("not_riff", lambda b: b"ID3\x03 this is an mp3, honest" * 4, "not a WAV file"),
    ("truncated", lambda b: b[:len(b) // 2], "truncated"),
    ("header_only", lambda b: b[:20], "truncated"),
    ("mulaw", lambda b: b[:20] + struct.pack("<H", 7) + b[22:], "unsupported sample format 7"),
    ("zero_channels", lambda b: b[:22] + struct.pack("<H", 0) + b[24:], "0 channels"),
    ("absurd_rate", lambda b: b[:24] + struct.pack("<I", 5) + b[28:], "sample rate 5 Hz"),
])
def test_bad_files_are_refused_clearly(tmp_path, name, make, needle):
    path = tmp_path / f"{name}.wav"
    path.write_bytes(make(_valid_bytes(tmp_path)))
    with pytest.raises(WavError, match=needle) as err:
        read_wav(path)
    assert str(path) in str(err.value) and isinstance(err.value, EdgepackError)


def test_missing_file(tmp_path):
    with pytest.raises(WavError, match="cannot read"):
        read_wav(tmp_path / "nope.wav")


def test_length_limit(tmp_path):
    write_wav(tmp_path / "a.wav", np.zeros(32000))
    with pytest.raises(WavError, match="more than the limit of 1 s"):
        read_wav(tmp_path / "a.wav", max_seconds=1)
    assert read_wav(tmp_path / "a.wav", max_seconds=3).shape == (32000,)


def test_raw_pcm16():
    ints = np.array([0, 1, -1, 32767, -32768, 1000], dtype="<i2")
    np.testing.assert_array_equal(read_pcm16(io.BytesIO(ints.tobytes())), ints / 32768.0)
    blocks = list(iter_pcm16(io.BytesIO(ints.tobytes()), block_samples=4))
    assert [len(b) for b in blocks] == [4, 2]
    np.testing.assert_array_equal(np.concatenate(blocks), ints / 32768.0)
    with pytest.raises(WavError, match="whole number of 16-bit samples"):
        read_pcm16(io.BytesIO(b"\x00\x01\x02"))
    with pytest.raises(WavError, match="more than 0.0001 s"):
        read_pcm16(io.BytesIO(bytes(100)), max_seconds=0.0001)


def test_wav_written_to_a_pipe(tmp_path):
    """espeak-ng and sox write a placeholder data size (0x7ffff000) when writing to a pipe."""
    import shutil
    import subprocess

    if shutil.which("sox") is None:
        pytest.skip("sox is not installed (scripts/setup-system.sh)")
    piped = subprocess.run(["sox", "-D", "-n", "-b", "16", "-r", "16000", "-c", "1", "-t", "wav", "-", "synth", "0.25",
                            "sine", "440"], capture_output=True, check=True).stdout
    assert struct.unpack("<I", piped[40:44])[0] >= 0x7FFFF000
    (tmp_path / "piped.wav").write_bytes(piped)
    subprocess.run(["sox", "-D", "-n", "-b", "16", "-r", "16000", "-c", "1", str(tmp_path / "file.wav"), "synth",
                    "0.25", "sine", "440"], check=True)
    np.testing.assert_array_equal(read_wav(tmp_path / "piped.wav"), read_wav(tmp_path / "file.wav"))
    assert len(read_wav(tmp_path / "piped.wav")) == 4000
