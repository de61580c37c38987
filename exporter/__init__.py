"""The lowering compiler: torch → ONNX (ai.edgepack custom ops + fallbacks) → TFLite. Not built yet."""
