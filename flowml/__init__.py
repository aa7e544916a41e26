"""flowml: a small array compiler for deep learning.

Write a model in a .flow file (or build it in Python), differentiate it symbolically, and run it
on numpy (the reference backend) — see README.md and docs/.
"""

from .api import (allgather, allreduce, broadcast, rank, world_size, arange, eye, linspace, bernoulli, normal, randint, uniform, default_graph, full, op, hessian, hessian_vector, jacobian, lop, ones, rop, zeros, function, get_value, grad, load, loads, param, parse_program,
                  reset_default_graph, set_value, shared, tensor)
from .errors import (FlowCallError, FlowError, FlowGradError, FlowInternalError, FlowNameError,
                     FlowRuntimeError, FlowSyntaxError, FlowTypeError)
from .ir.lib import *  # noqa: F401,F403 - the library's functions (`flowml.ir.lib.__all__`)
from .gradcheck import GradientMismatch, verify_grad
from .program import Function, Model
from .profiling import Profile, profile


def to_onnx(fn: Function, path=None):
    """`fn` (a Function without updates) as an ONNX ModelProto, written to `path` when given:
    `fn.to_onnx(path)` (docs/onnx.md)."""
    return fn.to_onnx(path)


def from_onnx(model, backend=None, name=None, static_inputs=None):
    """A Model of an ONNX model (a path or an onnx.ModelProto) with one fn, named after its
    graph (or `name`, or `predict`) (docs/onnx.md, "Import")."""
    from .interop.onnx_import import from_onnx as _from_onnx
    return _from_onnx(model, backend=backend, name=name, static_inputs=static_inputs)

__version__ = "0.1.0"

__all__ = [name for name in dir() if not name.startswith("_")]
