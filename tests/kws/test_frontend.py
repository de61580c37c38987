"""The MFCC front end: torch, numpy, C, the ai.edgepack.MFCC op in ORT (custom op and standard-op
fallback), onnx's ReferenceEvaluator and the TFLite delegate agree within 1e-4 with an independent
float64 reference written from tf.signal's definition, on random audio and real (espeak-ng) speech."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import wave

import numpy as np
import pytest
import torch

from edgepack.kws import frontend
from edgepack.kws.frontend import FrontendError, MFCCConfig

TOL = 1e-4


def reference_mfcc(audio: np.ndarray, sample_rate=16000, window=480, hop=320, fft=512, mels=40,
                   coefficients=10, lower=20.0, upper=4000.0, offset=1e-6) -> np.ndarray:
    """tf.signal's stft → abs → linear_to_mel_weight_matrix → log → mfccs_from_log_mel_spectrograms,
    rewritten with loops in float64 for one clip [samples] → [frames, coefficients]."""
    def mel(hz):
        return 1127.0 * math.log(1.0 + hz / 700.0)

    bins = fft // 2 + 1
    edges = [mel(lower) + (mel(upper) - mel(lower)) * i / (mels + 1) for i in range(mels + 2)]
    weights = np.zeros((bins, mels))
    for b in range(1, bins):
        m = mel(b * sample_rate / 2 / (bins - 1))
        for j in range(mels):
            rise = (m - edges[j]) / (edges[j + 1] - edges[j])
            fall = (edges[j + 2] - m) / (edges[j + 2] - edges[j + 1])
            weights[b, j] = max(0.0, min(rise, fall))
    hann = np.hanning(window + 1)[:-1]
    frames = 1 + (len(audio) - window) // hop
    out = np.zeros((frames, coefficients))
    for f in range(frames):
        chunk = np.zeros(fft)
        chunk[:window] = audio[f * hop:f * hop + window] * hann
        log_mel = np.log(np.abs(np.fft.fft(chunk)[:bins]) @ weights + offset)
        for k in range(coefficients):
            dct = 2 * sum(log_mel[n] * math.cos(math.pi * k * (2 * n + 1) / (2 * mels)) for n in range(mels))
            out[f, k] = dct / math.sqrt(2 * mels)
    return out


@pytest.fixture(scope="module")
def random_audio() -> np.ndarray:
    """Two clips of 1 s uniform noise in [-1, 1] and one of quiet noise, float32 [3, 16000]."""
    rng = np.random.default_rng(12)
    audio = rng.uniform(-1, 1, (3, 16000)).astype(np.float32)
    audio[2] *= 1e-3
    return audio


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    """1 s of real synthetic speech ("yes, stop") from espeak-ng, resampled to 16 kHz by sox, float32."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (scripts/setup-system.sh installs it)")
    folder = tmp_path_factory.mktemp("speech")
    subprocess.run(["espeak-ng", "-w", str(folder / "raw.wav"), "yes, stop"], check=True, capture_output=True)
    subprocess.run(["sox", str(folder / "raw.wav"), "-r", "16000", "-c", "1", "-b", "16", str(folder / "s.wav"),
                    "pad", "0", "1", "trim", "0", "1"], check=True, capture_output=True)
    with wave.open(str(folder / "s.wav")) as f:
        assert (f.getframerate(), f.getnchannels(), f.getnframes()) == (16000, 1, 16000)
        pcm = np.frombuffer(f.readframes(16000), dtype="<i2")
    assert np.abs(pcm).max() > 3000, "espeak-ng produced (almost) silence"
    return (pcm / 32768.0).astype(np.float32)


@pytest.fixture(scope="module")
def clips(random_audio, speech) -> np.ndarray:
    """The random clips and the speech clip, [4, 16000] float32."""
    return np.concatenate([random_audio, speech[None]])


@pytest.fixture(scope="module")
def expected(clips) -> np.ndarray:
    """The independent float64 reference of every clip, [4, 49, 10]."""
    return np.stack([reference_mfcc(c.astype(np.float64)) for c in clips])


def test_numpy_matches_reference(clips, expected):
    got = frontend.mfcc_numpy(clips)
    assert got.shape == (4, 49, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)


def test_torch_matches_reference_on_batches(clips, expected):
    got = frontend.mfcc(torch.from_numpy(clips))
    assert got.shape == (4, 49, 10) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected, rtol=0, atol=TOL)
    module = frontend.MFCC()
    np.testing.assert_allclose(module(torch.from_numpy(clips[3])).numpy(), expected[3], rtol=0, atol=TOL)
    assert frontend.mfcc(torch.zeros(2, 3, 16000)).shape == (2, 3, 49, 10)


def test_frame_count_and_other_lengths(speech):
    config = frontend.DEFAULT
    assert [config.num_frames(n) for n in (480, 799, 800, 16000)] == [1, 1, 2, 49]
    short = speech[:1000].astype(np.float64)
    np.testing.assert_allclose(frontend.mfcc(torch.from_numpy(speech[:1000])).numpy(), reference_mfcc(short),
                               rtol=0, atol=TOL)


def test_other_config_matches_reference(speech):
    config = MFCCConfig(window_length=400, hop_length=160, fft_length=512, num_mel_bins=32, num_coefficients=13,
                        lower_hz=60.0, upper_hz=7600.0, log_offset=1e-3)
    want = reference_mfcc(speech.astype(np.float64), window=400, hop=160, mels=32, coefficients=13, lower=60.0,
                          upper=7600.0, offset=1e-3)
    np.testing.assert_allclose(frontend.mfcc(torch.from_numpy(speech), config).numpy(), want, rtol=0, atol=TOL)


def test_bad_input_is_refused():
    with pytest.raises(FrontendError, match="at least one window of 480 samples"):
        frontend.mfcc(torch.zeros(1, 479))
    with pytest.raises(FrontendError, match="lower_hz=nan must be a finite number"):
        MFCCConfig(lower_hz=float("nan"))
    with pytest.raises(FrontendError, match="fft_length=500 must be a power of two"):
        MFCCConfig(fft_length=500)
    with pytest.raises(FrontendError, match="window_length=600 must be <= fft_length=512"):
        MFCCConfig(window_length=600)
    with pytest.raises(FrontendError, match="upper_hz"):
        MFCCConfig(upper_hz=9000.0)


# ---- C (runtime_kernels/src/mfcc.c) -------------------------------------------------------------

def test_c_matches_reference_on_every_variant(clips, expected):
    from edgepack.runtime_kernels import kernels

    for variant in kernels.variants():
        with kernels.use_variant(variant):
            got = kernels.mfcc(clips)
        assert got.shape == (4, 49, 10)
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=variant)


def test_c_other_config_and_errors(speech):
    from edgepack.runtime_kernels import kernels
    from edgepack.runtime_kernels.loader import KernelError

    config = dict(window_length=400, hop_length=160, num_mel_bins=32, num_coefficients=13, lower_hz=60.0,
                  upper_hz=7600.0, log_offset=1e-3)
    want = reference_mfcc(speech.astype(np.float64), window=400, hop=160, mels=32, coefficients=13, lower=60.0,
                          upper=7600.0, offset=1e-3)
    np.testing.assert_allclose(kernels.mfcc(speech, **config), want, rtol=0, atol=TOL)
    with pytest.raises(KernelError, match=r"num_samples=479; must be at least one window \(window_length=480\)"):
        kernels.mfcc(speech[:479])
    with pytest.raises(KernelError, match="lower_hz=nan"):
        kernels.mfcc(speech, lower_hz=float("nan"))
    with pytest.raises(KernelError, match="num_coefficients=41; must be in"):
        kernels.mfcc(speech, num_coefficients=41)


# ---- the ai.edgepack.MFCC op: ORT custom op, fallback function, ReferenceEvaluator ------------

def mfcc_model(**attributes):
    """One ai.edgepack.MFCC node (every attribute written, as the exporter does) with its fallback."""
    import onnx
    from onnx import TensorProto, helper

    from edgepack.exporter.fallbacks import FUNCTIONS, STANDARD_OPSET
    from edgepack.runtime_kernels.op_spec import DOMAIN, OPS, OPSET_VERSION

    node = helper.make_node("MFCC", ["audio"], ["Y"], domain=DOMAIN, name="frontend",
                            **(OPS["MFCC"].defaults | attributes))
    graph = helper.make_graph([node], "mfcc", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["N", "S"])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["N", "F", "C"])])
    model = helper.make_model(graph, functions=[FUNCTIONS["MFCC"]()], opset_imports=[
        helper.make_opsetid("", STANDARD_OPSET), helper.make_opsetid(DOMAIN, OPSET_VERSION)])
    onnx.checker.check_model(model, full_check=True)
    return model


def run_everywhere(model, audio) -> dict[str, np.ndarray]:
    """The model's output in ORT with our library, in ORT on the fallback, in ReferenceEvaluator."""
    from onnx.reference import ReferenceEvaluator

    from edgepack.runtime_kernels.ort_session import onnx_session

    data = model.SerializeToString()
    return {"ort library": onnx_session(data).run(None, {"audio": audio})[0],
            "ort fallback": onnx_session(data, use_kernels=False).run(None, {"audio": audio})[0],
            "reference evaluator": ReferenceEvaluator(model).run(None, {"audio": audio})[0]}


def test_op_matches_reference_in_ort_and_fallback(clips, expected):
    for where, got in run_everywhere(mfcc_model(), clips).items():
        assert got.shape == (4, 49, 10), where
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOL, err_msg=where)


def test_op_other_config_and_batch_shapes(speech):
    attributes = dict(window_length=400, hop_length=160, num_mel_bins=32, num_coefficients=13, lower_hz=60,
                      upper_hz=7600)
    want = reference_mfcc(speech.astype(np.float64), window=400, hop=160, mels=32, coefficients=13, lower=60.0,
                          upper=7600.0)
    audio = np.stack([speech, speech[::-1]])
    for where, got in run_everywhere(mfcc_model(**attributes), audio).items():
        assert got.shape == (2, 98, 13), where
        np.testing.assert_allclose(got[0], want, rtol=0, atol=TOL, err_msg=where)


def test_op_refuses_bad_attributes_and_short_audio():
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument, RuntimeException

    from edgepack.exporter.validate import InvalidNodeError, check_onnx_model
    from edgepack.runtime_kernels.ort_session import onnx_session

    ort_errors = (Fail, InvalidArgument, RuntimeException)
    cases = {
        "attribute 'window_length' = 600; must be <= fft_length = 512": dict(window_length=600),
        "attribute 'fft_length' = 500; must be a power of two": dict(fft_length=500),
        "attribute 'num_coefficients' = 50; must be <= num_mel_bins = 40": dict(num_coefficients=50),
        "need lower_hz < upper_hz <= sample_rate / 2 = 16000 / 2": dict(upper_hz=9000),
        "attribute 'num_mel_bins' = 0; must be in [1, 1024]": dict(num_mel_bins=0),
    }
    for message, attributes in cases.items():
        model = mfcc_model(**attributes)
        with pytest.raises(ort_errors, match=re.escape(message)):
            onnx_session(model.SerializeToString())
        with pytest.raises(InvalidNodeError, match=re.escape(message)):
            check_onnx_model(model, "test")
    session = onnx_session(mfcc_model().SerializeToString())
    short = "input 'audio' has shape [1, 479]; must be [..., samples] (rank 1..15) with at least one window"
    with pytest.raises(ort_errors, match=re.escape(short)):
        session.run(None, {"audio": np.zeros((1, 479), np.float32)})


# ---- export: AudioModel(DS-CNN) on raw audio -----------------------------------------------------

def test_audio_model_exports_one_mfcc_node(tmp_path, clips):
    """AudioModel(model) as ONNX: one ai.edgepack.MFCC node feeding the model's graph (a conv + FC head
    here: the logits follow the features closely, so a wrong front end shows)."""
    import onnx

    from edgepack.exporter.onnx_export import ExportError, export_onnx

    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(1, 4, (10, 4), stride=2), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 20 * 4, 12))
    model = frontend.AudioModel(head).eval()
    audio = torch.from_numpy(clips)
    path = export_onnx(model, audio[:2], tmp_path / "audio.onnx")
    proto = onnx.load(path)
    assert [n.op_type for n in proto.graph.node if n.domain == "ai.edgepack"] == ["MFCC"]
    want = model(audio).detach().numpy()
    assert np.ptp(want, axis=0).max() > 1e-2, "the logits do not depend on the audio"
    for where, got in run_everywhere(proto, clips).items():
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=where)
    wrong = frontend.AudioModel(head, MFCCConfig(lower_hz=20.5))
    with pytest.raises(ExportError, match="whole Hz"):
        export_onnx(wrong, audio[:1], tmp_path / "wrong.onnx")


# ---- TFLite: the CUSTOM ai.edgepack.MFCC op in the delegate ------------------------------------

def test_tflite_delegate_matches_reference(tmp_path, clips, expected):
    import onnx

    from edgepack.exporter.tflite_export import convert_onnx_to_tflite
    from edgepack.runtime_kernels.tflite_runtime import tflite_interpreter

    onnx.save(mfcc_model(), tmp_path / "mfcc.onnx")
    path = convert_onnx_to_tflite(tmp_path / "mfcc.onnx", tmp_path / "mfcc.tflite", batch_size=4,
                                  input_shapes={"audio": (4, 16000)})
    interpreter = tflite_interpreter(path)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], clips)
    interpreter.invoke()
    got = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    assert got.shape == (4, 49, 10)
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL)
