import onnx
import torch

from qk_export.exporter import export_onnx, weight_bytes
from qk_export.graphs import model_specs, sample_inputs, wrap
from qk_export.parity import FP32_BOUND, fp32_parity
from qk_export.trt_check import check_model
from qk_train.models.unified import QKModel


def test_large_weights_go_to_one_external_data_file(tiny_checkpoint, tmp_path):
    model = QKModel.from_checkpoint(tiny_checkpoint)
    spec = model_specs(model, region=False)["decoder"]
    module = wrap(model, spec)
    files = export_onnx(module, spec, sample_inputs(spec, model, torch.Generator().manual_seed(0)),
                        tmp_path / "decoder.onnx", 17, external_threshold=10_000)  # as if it were over 2 GB
    assert [f.name for f in files] == ["decoder.onnx", "decoder.onnx.data"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["decoder.onnx", "decoder.onnx.data"]
    header = onnx.load(str(tmp_path / "decoder.onnx"), load_external_data=False)
    assert weight_bytes(header) > 10_000 and (tmp_path / "decoder.onnx").stat().st_size < weight_bytes(header)
    assert fp32_parity(module, spec, tmp_path / "decoder.onnx", model, seed=3)["max_abs"] <= FP32_BOUND
    assert check_model(header, "decoder", base_dir=tmp_path) == []
