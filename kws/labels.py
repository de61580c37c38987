"""The 12 keyword-spotting classes (Speech Commands / Hello Edge order) and the clip format."""

CLASSES: tuple[str, ...] = ("silence", "unknown", "yes", "no", "up", "down", "left", "right",
                            "on", "off", "stop", "go")
KEYWORDS: tuple[str, ...] = CLASSES[2:]
SAMPLE_RATE = 16000  # Hz
CLIP_SAMPLES = SAMPLE_RATE  # one second
