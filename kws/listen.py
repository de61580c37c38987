"""``edgepack kws listen MODEL FILE.wav|-``: streaming keyword detection, one JSON line per detection.

A WAV file is read whole (any common format: resampled to 16 kHz, channels averaged); ``-`` reads raw
signed 16-bit little-endian 16 kHz mono PCM from stdin and detects as the audio arrives.
"""

from __future__ import annotations

import json
import sys

from .detector import RecognizeCommands, StreamingDetector, detector_file, recognizer_for
from .labels import SAMPLE_RATE


def add_parser(subparsers) -> None:
    """Add ``listen`` to the ``edgepack kws`` sub-commands."""
    p = subparsers.add_parser("listen", help="detect keywords in a WAV file or raw PCM on stdin (JSON lines)")
    add_detector_arguments(p)
    p.add_argument("audio", metavar="FILE.wav|-", help="a WAV file, or - for raw s16le 16 kHz mono PCM on stdin")
    p.set_defaults(handler=_listen)


def add_detector_arguments(p) -> None:
    """The model and the RecognizeCommands settings (shared with ``kws stream-eval``)."""
    p.add_argument("model", help="a model file: .onnx, .tflite, a `kws train` .safetensors checkpoint or a torch .pt "
                                 "(input MFCC [1,1,49,10] or raw audio [1,16000])")
    p.add_argument("--model-kind", choices=("onnx", "tflite", "torch"), help="override the kind the suffix says")
    p.add_argument("--detector", metavar="JSON",
                   help="detector settings file (default: detector.json beside MODEL when there is one, as "
                        "`edgepack kws calibrate` writes; else micro_speech's settings); the flags below override it")
    p.add_argument("--threshold", type=float, help="averaged posterior to detect (default 0.8)")
    p.add_argument("--window-ms", type=float, help="posterior averaging window (default 1000)")
    p.add_argument("--suppression-ms", type=float,
                   help="no second detection of the same keyword this soon (default 1500)")
    p.add_argument("--min-count", type=int, help="results needed in the window (default 3)")
    p.add_argument("--hop-ms", type=int, default=20,
                   help="model run interval, a multiple of 20 from 20 to 980 (default 20)")


def recognizer_from(args) -> RecognizeCommands:
    """The RecognizeCommands of the command line: the flags given, over ``--detector`` or the model's
    detector.json, over micro_speech's settings; says on stderr which file it used."""
    source = args.detector if args.detector is not None else detector_file(args.model)
    if source is not None:
        print(f"detector settings from {source}", file=sys.stderr)
    return recognizer_for(args.model, source, threshold=args.threshold, window_ms=args.window_ms,
                          suppression_ms=args.suppression_ms, minimum_count=args.min_count)


def _listen(args) -> int:
    from .wav import iter_pcm16, read_wav

    detector = StreamingDetector(args.model, hop_ms=args.hop_ms, recognizer=recognizer_from(args),
                                 model_kind=args.model_kind)
    if args.audio == "-":
        blocks = iter_pcm16(sys.stdin, block_samples=detector.hop)
    else:
        audio = read_wav(args.audio, SAMPLE_RATE)
        blocks = (audio[i:i + SAMPLE_RATE] for i in range(0, len(audio), SAMPLE_RATE))
    for block in blocks:
        for detection in detector.feed(block):
            print(json.dumps(detection.as_dict()), flush=True)
    return 0
