"""qk_runtime: run a query-kontext bundle with ONNX Runtime, OpenVINO or TensorRT, without torch."""
