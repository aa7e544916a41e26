"""flowml's benchmark harness against numpy, numexpr, numba, PyTensor, JAX and PyTorch.

See bench/README.md; entry point: bench/run.py (also `python -m bench`)."""
