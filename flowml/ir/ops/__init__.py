"""The primitive ops. Each is defined once, in the module of its family: its type rule, its numpy
reference implementation, its VJP (reverse-mode rule) and JVP, and its properties — attributes
of `Op` (`commutative`, `cheap`, `comparison`, `kernel_reduce`, ...) that the passes and backends
read, so adding an op touches its definition and its lowerings only.

VJP rules are written with IR-building functions (`flowml.ir.lib`, imported as `L`), never with
numpy, so a gradient is a graph that can be optimized, compiled and differentiated again. A rule
gets the output cotangent `g`, the op's output `out` and its operands (all `Var`s) plus the
node's attrs, and returns one entry per operand: a zero-argument function building that
operand's cotangent, or None when the operand gets no gradient through this op. Returning
functions means a rule builds nothing for operands that nobody differentiates.

Users don't call these directly; `flowml.ir.lib` wraps them with numpy's calling conventions
(promotion, axis normalization, broadcasting of python scalars).

The families (the rest of flowml imports this package as `P` and reads every op from here):

    core         Op, the registry OPS, the leaves (input, param, const, dim), shared helpers
    elementwise  Elementwise and every op built from it (arithmetic, math, comparisons,
                 logic), where, cast
    control      ifelse (lazy), stop_gradient
    shape        transpose, reshape, broadcast_to, concatenate, concat_part; full,
                 zeros_like, arange
    indexing     index_type (the shape algebra of x[spec]), index, index_add, onehot
    reduce       sum, prod, max, min, logsumexp, argmax, argmin, softmax, log_softmax,
                 categorical_crossentropy
    cumulative   cumsum, cumprod (running sums and products along an axis)
    sorting      argsort (numpy's stable order)
    linalg       matmul, gemm (alpha * a @ b + beta * c, built by the specialize phase)
    decomp       solve, solve_triangular, cholesky, inv, det, slogdet, eigh, svd, qr (LAPACK's, natively)
    rng          random (Philox)
    conv         conv2d, max_pool2d and the ops of their derivatives
    collective   allreduce, allgather, broadcast, rank, world_size (and their builders)

Importing a family registers its ops in OPS, in the order below. (`scan` and `rng_fold` live in
`flowml.ir.scan`, `fused` in `flowml.ir.fused`.)
"""

from .core import OPS, Leaf, Op, const, dim, input_, linear_in, param  # noqa: F401
from .elementwise import (  # noqa: F401
    Cast, Elementwise, Where, abs_, add, cast, cos, div, eq, erf, erfc, exp, expm1, floordiv, ge, gt, le,
    log, log1p, logical_and, logical_not, logical_or, lt, maximum, minimum, mod, mul, ne, neg, pow_, relu,
    sigmoid, sign, sin, softplus, sqrt, sub, tanh, unary_float, where,
    arccos, arccosh, arcsin, arcsinh, arctan, arctan2, arctanh, ceil, cosh, floor, hypot, isfinite, isinf,
    isnan, log10, log2, rint, sinh, tan, trunc)
from .control import IfElse, StopGradient, ifelse, stop_gradient  # noqa: F401
from .shape import (  # noqa: F401
    Arange, BroadcastTo, ConcatPart, Concatenate, Full, Reshape, Transpose, ZerosLike, arange, broadcast_to,
    concat_part, concatenate, full, reshape, transpose, zeros_like)
from .indexing import Index, IndexAdd, Onehot, index, index_add, index_type, onehot  # noqa: F401
from .reduce import (  # noqa: F401
    ArgReduce, CategoricalCrossentropy, Reduce, Softmax, argmax, argmin, categorical_crossentropy, log_softmax,
    logsumexp, max_, min_, prod, softmax, sum_)
from .cumulative import Cumulative, cumprod, cumsum  # noqa: F401
from .sorting import Argsort, argsort  # noqa: F401
from .linalg import Gemm, Matmul, gemm, matmul  # noqa: F401
from .decomp import (  # noqa: F401
    Cholesky, Det, Eigh, Inv, Qr, Slogdet, Solve, SolveTriangular, Svd, cholesky, det, eigh, inv, qr, slogdet,
    solve, solve_triangular, svd)
from .rng import Random, random  # noqa: F401
from .conv import (  # noqa: F401
    Conv2d, Conv2dBackpropFilter, Conv2dBackpropInput, MaxPool2d, MaxPool2dBackprop, MaxPool2dTangent, conv2d,
    conv2d_backprop_filter, conv2d_backprop_input, max_pool2d, max_pool2d_backprop, max_pool2d_tangent)
from . import collective  # noqa: F401  (registers the collective ops)
