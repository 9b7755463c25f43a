"""qk_export: turn a trained query-kontext checkpoint into a verified ONNX bundle.

    from qk_export.bundle import export_bundle      # checkpoint -> bundle folder
    from qk_export.trt_check import check_bundle    # TensorRT readiness problems, as sentences
    from qk_export.verify import verify_bundle      # sha256 of every file, via the runtime's loader
"""
__version__ = "0.1.0"
