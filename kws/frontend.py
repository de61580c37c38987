"""The keyword-spotting MFCC front end (MLPerf Tiny KWS / tf.signal definition, docs/ops.md "MFCC").

16 kHz float audio in [-1, 1] → frames of 480 samples every 320 (no padding; 1 s gives 49) →
periodic Hann window, zero-padded 512-point rFFT → magnitude (257 bins) → 40 triangular HTK-mel
bands over 20–4000 Hz (tf.signal.linear_to_mel_weight_matrix) → log(mel + 1e-6) → DCT-II scaled as
tf.signal.mfccs_from_log_mel_spectrograms → the first 10 coefficients. The same definition runs in
C (runtime_kernels/src/mfcc.c) and as the ``ai.edgepack.MFCC`` op.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from edgepack.errors import EdgepackError

SAMPLE_RATE = 16000
WINDOW_LENGTH = 480  # 30 ms
HOP_LENGTH = 320  # 20 ms
FFT_LENGTH = 512
NUM_MEL_BINS = 40
NUM_COEFFICIENTS = 10
LOWER_HZ = 20.0
UPPER_HZ = 4000.0
LOG_OFFSET = 1e-6


class FrontendError(EdgepackError):
    """Bad input to the MFCC front end: audio shorter than one window, an invalid configuration."""


@dataclass(frozen=True)
class MFCCConfig:
    """The front end's parameters (the ``ai.edgepack.MFCC`` attributes, C's ep_mfcc_config)."""

    sample_rate: int = SAMPLE_RATE
    window_length: int = WINDOW_LENGTH
    hop_length: int = HOP_LENGTH
    fft_length: int = FFT_LENGTH
    num_mel_bins: int = NUM_MEL_BINS
    num_coefficients: int = NUM_COEFFICIENTS
    lower_hz: float = LOWER_HZ
    upper_hz: float = UPPER_HZ
    log_offset: float = LOG_OFFSET

    def __post_init__(self):
        problems = []
        ints = ("sample_rate", "window_length", "hop_length", "fft_length", "num_mel_bins", "num_coefficients")
        for name in ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r} must be a positive integer")
        for name in ("lower_hz", "upper_hz", "log_offset"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.append(f"{name}={value!r} must be a finite number")
        if not problems:
            n = self.fft_length
            if n < 4 or n & (n - 1):
                problems.append(f"fft_length={n} must be a power of two >= 4")
            if self.window_length > n:
                problems.append(f"window_length={self.window_length} must be <= fft_length={n}")
            if self.num_coefficients > self.num_mel_bins:
                problems.append(f"num_coefficients={self.num_coefficients} must be <= num_mel_bins={self.num_mel_bins}")
            if not 0 <= self.lower_hz < self.upper_hz <= self.sample_rate / 2:
                problems.append(f"need 0 <= lower_hz ({self.lower_hz}) < upper_hz ({self.upper_hz}) <= "
                                f"sample_rate / 2 ({self.sample_rate / 2})")
            if self.log_offset < 0:
                problems.append(f"log_offset={self.log_offset} must be >= 0")
        if problems:
            raise FrontendError("invalid MFCC config: " + "; ".join(problems))

    def as_dict(self) -> dict:
        """The fields by name (the op's attributes)."""
        return asdict(self)

    def num_frames(self, num_samples: int) -> int:
        """Frames in ``num_samples`` samples (no padding): 1 + (samples - window) // hop."""
        if num_samples < self.window_length:
            ms = self.window_length * 1000 // self.sample_rate
            raise FrontendError(f"audio has {num_samples} samples; the MFCC front end needs at least one "
                                f"window of {self.window_length} samples ({ms} ms)")
        return 1 + (num_samples - self.window_length) // self.hop_length


DEFAULT = MFCCConfig()


def hertz_to_mel(hz):
    """HTK mel scale, as tf.signal: 1127 · ln(1 + f / 700)."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def hann_window(length: int) -> np.ndarray:
    """Periodic Hann window (tf.signal.hann_window): 0.5 − 0.5 cos(2πn / length), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(length) / length)


def mel_weight_matrix(config: MFCCConfig = DEFAULT, warp=None) -> np.ndarray:
    """[fft_length/2 + 1, num_mel_bins] float64, as tf.signal.linear_to_mel_weight_matrix: triangles
    in mel space with edges evenly spaced from lower_hz to upper_hz; the DC bin gets no weight.
    ``warp`` (training only, kws.augment.formant_warp): maps each bin's frequency (Hz, numpy) to the
    frequency at which the triangles see it."""
    bins = config.fft_length // 2 + 1
    bin_hz = np.linspace(0.0, config.sample_rate / 2, bins)[1:]
    spectrum_mel = hertz_to_mel(bin_hz if warp is None else warp(bin_hz))[:, None]
    edges = np.linspace(hertz_to_mel(config.lower_hz), hertz_to_mel(config.upper_hz), config.num_mel_bins + 2)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (spectrum_mel - lower) / (center - lower)
    falling = (upper - spectrum_mel) / (upper - center)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return np.concatenate([np.zeros((1, config.num_mel_bins)), weights])


def dct_matrix(config: MFCCConfig = DEFAULT) -> np.ndarray:
    """[num_mel_bins, num_coefficients] float64: DCT-II scaled as tf.signal.mfccs_from_log_mel_
    spectrograms, c_k = sqrt(2 / M) Σ_m x_m cos(π k (2m + 1) / 2M) for every k (orthonormal for
    k ≥ 1; c_0 is √2 times the orthonormal one)."""
    m = config.num_mel_bins
    k = np.arange(config.num_coefficients)[None, :]
    n = np.arange(m)[:, None]
    return math.sqrt(2.0 / m) * np.cos(np.pi * k * (2 * n + 1) / (2 * m))


def mfcc_numpy(audio: np.ndarray, config: MFCCConfig = DEFAULT) -> np.ndarray:
    """Reference in float64 numpy: audio [..., samples] → [..., frames, num_coefficients]."""
    audio = np.asarray(audio, dtype=np.float64)
    frames = config.num_frames(audio.shape[-1])
    starts = np.arange(frames) * config.hop_length
    framed = audio[..., starts[:, None] + np.arange(config.window_length)]
    spectrum = np.abs(np.fft.rfft(framed * hann_window(config.window_length), n=config.fft_length))
    log_mel = np.log(spectrum @ mel_weight_matrix(config) + config.log_offset)
    return log_mel @ dct_matrix(config)


class MFCC(nn.Module):
    """The front end as a module: audio [..., samples] float → MFCC [..., frames, num_coefficients]."""

    def __init__(self, config: MFCCConfig = DEFAULT):
        super().__init__()
        self.config = config
        self.register_buffer("window", torch.tensor(hann_window(config.window_length), dtype=torch.float32),
                             persistent=False)
        self.register_buffer("mel", torch.tensor(mel_weight_matrix(config), dtype=torch.float32), persistent=False)
        self.register_buffer("dct", torch.tensor(dct_matrix(config), dtype=torch.float32), persistent=False)

    def forward(self, audio: torch.Tensor, mel: torch.Tensor | None = None) -> torch.Tensor:
        """``mel``: other mel weights ([bins, mel bins], or [N, bins, mel bins] one per clip) for training."""
        c = self.config
        if audio.dim() < 1:
            raise FrontendError("MFCC input must have a samples axis (shape [..., samples])")
        c.num_frames(audio.shape[-1])
        frames = audio.to(self.window.dtype).unfold(-1, c.window_length, c.hop_length)
        spectrum = torch.fft.rfft(frames * self.window, n=c.fft_length).abs()
        return torch.log(spectrum @ (self.mel if mel is None else mel) + c.log_offset) @ self.dct


_MODULES: dict[tuple, MFCC] = {}


def mfcc(audio: torch.Tensor, config: MFCCConfig = DEFAULT, mel: torch.Tensor | None = None) -> torch.Tensor:
    """MFCC of float audio [..., samples] (e.g. [B, 16000] → [B, 49, 10]) on audio's device; ``mel`` as
    ``MFCC.forward``."""
    key = (config, audio.device)
    if key not in _MODULES:
        _MODULES[key] = MFCC(config).to(audio.device)
    return _MODULES[key](audio, mel)


class AudioModel(nn.Module):
    """A model on raw audio: ``model`` (e.g. the DS-CNN on [N, 1, frames, coefficients]) after the
    front end, audio [N, samples] → mfcc → unsqueeze(1) → model. Its ONNX export holds one
    ai.edgepack.MFCC node before the model's graph."""

    def __init__(self, model: nn.Module, config: MFCCConfig = DEFAULT):
        super().__init__()
        self.frontend = MFCC(config)
        self.model = model

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.model(self.frontend(audio).unsqueeze(1))
