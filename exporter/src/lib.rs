//! ONNX exporter (issue: exporter). Not implemented yet.
