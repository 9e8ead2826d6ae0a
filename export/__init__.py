"""Keras -> ONNX export for edge-seg, with metadata and a parity check. Needs the [train] extra."""
