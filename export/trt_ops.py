"""What TensorRT's ONNX parser accepts, as data.

Source: onnx/onnx-tensorrt `docs/operators.md` at the "ONNX-TensorRT 10.1 GA release" commit
96e781103cfc4adf4a6bb557e94bac8e693f6f4c (June 2024): "TensorRT 10.0 supports operators in the
inclusive range of opset 9 to opset 20". `SUPPORTED` is its "Supported = Y" column, verbatim
op names; `RESTRICTIONS` the notes of that table that a graph can violate and that can be
checked without TensorRT. TensorRT 11 dropped implicit INT8 (not Q/DQ); its parser's op list
is not published in that repository, so TensorRT 10.x's list is the target checked here.
"""
from __future__ import annotations

TARGET = "TensorRT 10.x ONNX parser (onnx-tensorrt 10.1 GA docs/operators.md)"
OPSET_RANGE = (9, 20)

SUPPORTED = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor Gather GatherElements
GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual GridSample
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf
IsNaN LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool
MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul Neg NonMaxSuppression NonZero Not
OneHot Or Pad ParametricSoftplus Pow PRelu QuantizeLinear RandomNormal RandomNormalLike RandomUniform
RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign Round
ScaledTanh Scan Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice
Softmax Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK
Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

# op -> (input index that must be a constant, the table's words) for inputs that TensorRT
# needs as initializers / constants (opset >= 13 moved `axes` from an attribute to an input)
_AXES_INITIALIZER = "`axes` must be an initializer"
CONSTANT_INPUTS = {
    **{op: (1, _AXES_INITIALIZER) for op in (
        "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
        "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze")},
    "Slice": (3, _AXES_INITIALIZER),
    "Pad": (3, _AXES_INITIALIZER),
    "Unsqueeze": (1, "`axes` must be a constant tensor"),
}

# zero-point input of the Q/DQ ops: "`y_zero_point` must be 0" / "`x_zero_point` must be zero"
ZERO_POINT_INPUT = {"QuantizeLinear": 2, "DequantizeLinear": 2}

# attributes the parser rejects: op -> {attribute: allowed values}
ATTRIBUTE_LIMITS = {
    "ScatterND": {"reduction": ("none",)},  # "`reduction` is not supported"
}

# ops whose extra outputs are not supported: op -> number of outputs allowed
OUTPUT_LIMITS = {
    "LayerNormalization": 1,  # "Only the first output `Y` is supported."
}
