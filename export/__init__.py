"""qk_export: turn a trained query-kontext checkpoint into a verified ONNX bundle."""
