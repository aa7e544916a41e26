"""OpenCL backend infrastructure for flowml (pyopencl; PoCL gives a CPU device on Linux).

Modules (each usable on its own):
  device    choosing the device ("opencl", "opencl:N", FLOWML_OPENCL_DEVICE), cached context and
            queue, fp64 support, PoCL's kernel cache pointed into flowml's cache dir
  build     program builds cached by (source hash, device); build errors as FlowInternalError
  clc       OpenCL C types and literals, and the ScalarBuilder behind scalar.py's formulas
  codegen   kernel sources: fused nodes (elementwise / reductions), argmax/argmin, gather,
            scatter-add, tiled matmul, strided copy
  runtime   launching them on numpy arrays or cl.array.Arrays (strides, NDRange sizes)

`device` is imported first on purpose: it sets POCL_CACHE_DIR before pyopencl loads PoCL.
"""

from . import device  # noqa: F401  (first: see above)
