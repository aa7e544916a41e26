"""flowml as an ONNX backend (`onnx.backend.base.Backend`): what the onnx package's
conformance tests (`onnx.backend.test`) drive; tests/test_onnx_backend.py runs them.

flowml's shapes, axes and pads are static, while a node test may pass them as graph inputs (a
Reshape's shape, a ReduceSum's axes): a prepared model imports the graph at its first `run`,
with those inputs' values fixed (`from_onnx(static_inputs=...)`), and again only when they
change. Every other input stays an input of the compiled fn."""

from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep

from .onnx_import import from_onnx, static_input_names


class FlowmlRep(BackendRep):
    def __init__(self, model, backend: str):
        self.model, self.backend = model, backend
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [vi.name for vi in model.graph.input if vi.name not in inits]
        self.fixed = set(static_input_names(model))
        self._built: dict = {}  # the fixed inputs' values -> the fn

    def _fn(self, fixed: dict):
        key = tuple((n, v.dtype.str, v.shape, v.tobytes()) for n, v in sorted(fixed.items()))
        if key not in self._built:
            m = from_onnx(self.model, backend=self.backend, static_inputs=fixed)
            (self._built[key],) = m.functions.values()
        return self._built[key]

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            inputs = [inputs[n] for n in self.inputs]
        inputs = [np.asarray(v) for v in inputs]
        fixed = {n: v for n, v in zip(self.inputs, inputs) if n in self.fixed}
        fn = self._fn(fixed)
        outs = fn(*[v for n, v in zip(self.inputs, inputs) if n not in self.fixed])
        return tuple(np.asarray(o) for o in (outs if isinstance(outs, tuple) else (outs,)))


class FlowmlBackend(Backend):
    """The reference backend of flowml; `backend_for(name)` gives one for another backend."""

    flowml_backend = "reference"

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs):
        super().prepare(model, device, **kwargs)  # (onnx.checker)
        return FlowmlRep(model, cls.flowml_backend)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def backend_for(name: str) -> type[FlowmlBackend]:
    return type(f"Flowml{name.capitalize()}Backend", (FlowmlBackend,), {"flowml_backend": name})
