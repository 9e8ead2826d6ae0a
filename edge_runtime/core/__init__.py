"""Image in, masks out, with no files: preprocessing, the ONNX model and its metadata, post-processing, metrics."""
