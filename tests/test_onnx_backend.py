"""The ONNX conformance suite: the node tests of `onnx.backend.test`, on an allow-list by op
type (a new op in the onnx package never breaks this file by surprise), through flowml's ONNX
backend (flowml/interop/onnx_backend.py) on the reference and LLVM backends (FLOWML_ONNX_LLVM=0:
the reference backend only; LLVM compiles each case, about 20 s of the 30 s this file takes).

Every case of an included op type runs, except the ones listed in EXCLUDED, each with its
reason. `_expanded` variants (function bodies) and the `_cuda` duplicates are not run. The
count printed by `python tests/test_onnx_backend.py` is the one reported in docs/onnx.md."""

import os
import re
import unittest
import warnings

import pytest

onnx = pytest.importorskip("onnx")

import onnx.backend.test  # noqa: E402
import onnx.backend.test.runner as _runner  # noqa: E402
from onnx.backend.test.loader import load_model_tests  # noqa: E402

from flowml.interop.onnx_backend import backend_for  # noqa: E402

# The op types run: those flowml has the semantics of (see flowml/interop/onnx_import.py).
OP_TYPES = """
Abs Acosh Add And ArgMax ArgMin Asinh Atanh AveragePool BatchNormalization Cast CastLike Ceil Celu Clip
Concat Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace Det Div Dropout Elu Equal Erf Exp Expand EyeLike
Flatten Floor Gather GatherElements Gelu Gemm GlobalAveragePool GlobalMaxPool Greater GreaterOrEqual Hardmax HardSigmoid
HardSwish Identity InstanceNormalization IsInf IsNaN LayerNormalization LeakyRelu Less LessOrEqual
Log LogSoftmax LpNormalization MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod Mul NegativeLogLikelihoodLoss Neg Not OneHot Or PRelu
Pad Pow Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Round Selu Shape Shrink Sigmoid Sign Sin Sinh
Size Slice Softmax SoftmaxCrossEntropyLoss Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh
ThresholdedRelu Tile Transpose Trilu Unsqueeze Where Xor
""".split()

# Cases of included op types that do not run, and why (an attribute or dtype flowml lacks).
EXCLUDED = {
    "test_onehot_out_of_range_indices": "an index outside [-depth, depth): ONNX gives a row of off values, flowml "
                                        "raises (numpy's rule for indices)",
    "test_onehot_with_bfloat16_values": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_convtranspose_1d": "1-D transposed convolution (flowml convolves [N, C, H, W] images)",
    "test_convtranspose_3d": "3-D transposed convolution (flowml convolves [N, C, H, W] images)",
    "test_convtranspose_output_shape": "output_shape (pads only)",
    "test_convtranspose_kernel_shape": "output_shape (pads only)",
    "test_convtranspose_dilations": "dilations",
    "test_convtranspose_autopad_same": "auto_pad=SAME_UPPER (pads only)",
    "test_convtranspose_group_2": "group=2 (grouped convolutions)",
    "test_convtranspose_group_2_image_3": "group=2 (grouped convolutions)",
    "test_add_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_add_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_add_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_add_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_add_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_add_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_averagepool_3d_default": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_averagepool_2d_ceil": "ceil_mode=1",
    "test_averagepool_2d_ceil_last_window_starts_on_pad": "ceil_mode=1",
    "test_averagepool_2d_dilations": "ceil_mode=1",
    "test_averagepool_3d_dilations_small": "ceil_mode=1",
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True": "ceil_mode=1",
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True": "ceil_mode=1",
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_batchnorm_example_training_mode": "training mode (flowml imports inference graphs)",
    "test_batchnorm_epsilon_training_mode": "training mode (flowml imports inference graphs)",
    "test_cast_FLOAT_to_FLOAT16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_DOUBLE": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_DOUBLE_to_FLOAT16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_BFLOAT16": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_BFLOAT16_to_FLOAT": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_FLOAT8E4M3FN": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT8E4M3FN": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_FLOAT8E4M3FNUZ": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT8E4M3FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E4M3FN_to_FLOAT": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E4M3FN_to_FLOAT16": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E4M3FNUZ_to_FLOAT16": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_FLOAT8E5M2": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT8E5M2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_FLOAT8E5M2FNUZ": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT8E5M2FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E5M2_to_FLOAT": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E5M2_to_FLOAT16": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT8E5M2FNUZ_to_FLOAT16": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_UINT4": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_UINT4": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_INT4": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_INT4": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT4_to_FLOAT": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT4_to_FLOAT16": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT4_to_UINT8": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT4_to_FLOAT": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT4_to_FLOAT16": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT4_to_INT8": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT4E2M1_to_FLOAT": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT4E2M1_to_FLOAT16": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_FLOAT4E2M1": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_FLOAT4E2M1": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_UINT2": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_UINT2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT_to_INT2": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_FLOAT16_to_INT2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT2_to_FLOAT": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT2_to_FLOAT16": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_UINT2_to_UINT8": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT2_to_FLOAT": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT2_to_FLOAT16": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_INT2_to_INT8": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FN": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FN": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_e8m0_FLOAT_to_FLOAT8E8M0": "float8e8m0 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_e8m0_FLOAT16_to_FLOAT8E8M0": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT": "float8e8m0 tensors (flowml has bool, int32, int64, float, double)",
    "test_cast_e8m0_FLOAT8E8M0_to_FLOAT16": "float8e8m0 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_DOUBLE": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_DOUBLE_to_FLOAT16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_BFLOAT16": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_BFLOAT16_to_FLOAT": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT8E4M3FN": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FN": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT8E4M3FNUZ": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT8E4M3FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E4M3FN_to_FLOAT16": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E4M3FNUZ_to_FLOAT16": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT8E5M2": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT8E5M2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT8E5M2FNUZ": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT8E5M2FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E5M2_to_FLOAT": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E5M2_to_FLOAT16": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT8E5M2FNUZ_to_FLOAT16": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_UINT4": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_UINT4": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_INT4": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_INT4": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT4_to_FLOAT": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT4_to_FLOAT16": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT4_to_UINT8": "uint4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT4_to_FLOAT": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT4_to_FLOAT16": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT4_to_INT8": "int4 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT4E2M1_to_FLOAT": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT4E2M1_to_FLOAT16": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_FLOAT4E2M1": "float4e2m1 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_FLOAT4E2M1": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_UINT2": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_UINT2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT_to_INT2": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_FLOAT16_to_INT2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT2_to_FLOAT": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT2_to_FLOAT16": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_UINT2_to_UINT8": "uint2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT2_to_FLOAT": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT2_to_FLOAT16": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_INT2_to_INT8": "int2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FN": "float8e4m3fn tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E4M3FNUZ": "float8e4m3fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2": "float8e5m2 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT_to_FLOAT8E5M2FNUZ": "float8e5m2fnuz tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FN": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E4M3FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_castlike_no_saturate_FLOAT16_to_FLOAT8E5M2FNUZ": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_celu_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_celu_bfloat16": "bfloat16 tensors (flowml has bool, int32, int64, float, double)",
    "test_clip_default_int8_min": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_clip_default_int8_max": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_clip_default_int8_inbounds": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_div_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_training_dropout_default": "training mode (flowml imports inference graphs)",
    "test_training_dropout_default_mask": "training mode (flowml imports inference graphs)",
    "test_training_dropout": "training mode (flowml imports inference graphs)",
    "test_training_dropout_mask": "training mode (flowml imports inference graphs)",
    "test_training_dropout_zero_ratio": "training mode (flowml imports inference graphs)",
    "test_training_dropout_zero_ratio_mask": "training mode (flowml imports inference graphs)",
    "test_dropout_default_old": "Dropout's opset-11 form (ratio as an attribute)",
    "test_dropout_random_old": "Dropout's opset-11 form (ratio as an attribute)",
    "test_equal_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_string": "string tensors (flowml has bool, int32, int64, float, double)",
    "test_equal_string_broadcast": "string tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_greater_equal_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_identity_sequence": "sequence and optional values",
    "test_identity_opt": "sequence and optional values",
    "test_isinf_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_isnan_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_less_equal_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_max_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_maxpool_2d_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_maxpool_with_argmax_2d_precomputed_pads": "MaxPool's Indices output",
    "test_maxpool_with_argmax_2d_precomputed_strides": "MaxPool's Indices output",
    "test_maxpool_3d_default": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_maxpool_2d_ceil": "ceil_mode=1",
    "test_maxpool_2d_ceil_output_size_reduce_by_one": "ceil_mode=1",
    "test_maxpool_2d_dilations": "dilations",
    "test_maxpool_3d_dilations": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_maxpool_3d_dilations_use_ref_impl": "3-D pooling (flowml pools [N, C, H, W] images)",
    "test_maxpool_3d_dilations_use_ref_impl_large": "ceil_mode=1",
    "test_min_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_min_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_mixed_sign_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_float16_mixed_sign_fmod_0": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_float_edge_cases_fmod_0_float16": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_mixed_sign_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_mixed_sign_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_mod_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_mul_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_edge_pad": "mode='edge' padding (only constant)",
    "test_reflect_pad": "mode='reflect' padding (only constant)",
    "test_wrap_pad": "mode='wrap' padding (only constant)",
    "test_pow_types_float32_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
    "test_pow_types_float32_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_range_float16_type_positive_delta": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_range_bfloat16_type_positive_delta": "float16 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_int8": "int8 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_int16": "int16 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_uint8": "uint8 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_uint16": "uint16 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_uint32": "uint32 tensors (flowml has bool, int32, int64, float, double)",
    "test_sub_uint64": "uint64 tensors (flowml has bool, int32, int64, float, double)",
}

with warnings.catch_warnings():  # (the onnx package's own overflow warnings, making cases)
    warnings.simplefilter("ignore")
    NODE_CASES = [t for t in load_model_tests(kind="node") if "_expanded" not in t.name]
INCLUDED = sorted(t.name for t in NODE_CASES if t.model.graph.node[0].op_type in OP_TYPES)


def _suite(backend_name: str) -> dict:
    # (the runner would also load the onnx package's model-zoo and pytorch cases, which are not
    # run here: it is given the node cases, loaded once above)
    saved = _runner.load_model_tests
    _runner.load_model_tests = lambda kind="node", **kw: NODE_CASES if kind == "node" else []
    try:
        suite = onnx.backend.test.BackendTest(backend_for(backend_name), __name__)
    finally:
        _runner.load_model_tests = saved
    run = [name for name in INCLUDED if name not in EXCLUDED]
    suite.include("^(" + "|".join(re.escape(n) for n in run) + ")_cpu$")
    cases = suite.test_cases
    wanted = {f"{n}_cpu" for n in run}
    for case in cases.values():
        for attr in [a for a in vars(case) if a.startswith("test_") and a not in wanted]:
            delattr(case, attr)  # (the runner would report them as skips)
        case.__name__ = case.__qualname__ = f"{case.__name__}_{backend_name}"  # (both backends in one session)
    return {f"{name}_{backend_name}": case for name, case in cases.items()}


globals().update(_suite("reference"))
if os.environ.get("FLOWML_ONNX_LLVM", "1") != "0":
    globals().update(_suite("llvm"))


def test_every_passing_case_is_written_as_flow_with_the_same_outputs(tmp_path):
    """`flowml import`'s .flow writer over each passing case: loaded again, equal outputs."""
    import numpy as np

    import flowml
    from flowml.interop.flow_writer import write_flow
    from flowml.interop.onnx_import import static_input_names
    for t in NODE_CASES:
        if t.name not in INCLUDED or t.name in EXCLUDED:
            continue
        names = [vi.name for vi in t.model.graph.input]
        fixed = static_input_names(t.model)
        inputs = [onnx.numpy_helper.to_array(v) if isinstance(v, onnx.TensorProto) else v for v in t.data_sets[0][0]]
        imported = flowml.from_onnx(t.model, backend="reference",
                                    static_inputs={n: v for n, v in zip(names, inputs) if n in fixed})
        text, arrays = write_flow(imported)
        again = flowml.loads(text, backend="reference", file=f"{t.name}.flow")
        again.params.update(arrays)
        rest = [v for n, v in zip(names, inputs) if n not in fixed]
        (f1,), (f2,) = imported.functions.values(), again.functions.values()
        a, b = f1(*rest), f2(*rest)
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert x.dtype == y.dtype and x.shape == y.shape, t.name
            np.testing.assert_array_equal(x, y, err_msg=t.name)


def test_excluded_cases_are_cases_of_included_op_types():
    assert set(EXCLUDED) <= set(INCLUDED), sorted(set(EXCLUDED) - set(INCLUDED))


def test_the_floor_of_issue_18():
    # >= 350 cases over >= 50 op types (docs/onnx.md gives the exact count)
    passing = [n for n in INCLUDED if n not in EXCLUDED]
    ops = {t.model.graph.node[0].op_type for t in NODE_CASES if t.name in passing}
    assert len(passing) >= 350 and len(ops) >= 50, (len(passing), len(ops))


if __name__ == "__main__":
    passing = [n for n in INCLUDED if n not in EXCLUDED]
    print(f"{len(passing)} cases run / {len(INCLUDED)} cases of {len(OP_TYPES)} included op types")
    unittest.main()
