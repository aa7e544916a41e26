"""scipy's BLAS and LAPACK (its bundled LP64 OpenBLAS) callable from generated IR.

`scipy.linalg.cython_blas.__pyx_capi__` holds a PyCapsule per routine; the capsule's pointer
is a plain C function with the Fortran BLAS argument list: every argument by pointer, 32-bit
`int`s, column-major matrices, no hidden string-length arguments. The capsule's name is its C
signature, so it is read with PyCapsule_GetName before PyCapsule_GetPointer.

Generated IR calls `@flowml_dgemm(...)` etc.; `ensure_symbols()` binds those names to the
capsule pointers with `llvm.add_symbol` (binding by name keeps cached object code valid across
processes, unlike embedding the address).

Row-major operands (numpy's layout) with a column-major BLAS: a row-major M x N matrix with
row stride ld *is* a column-major N x M matrix with leading dimension ld, i.e. its transpose.
So for row-major C[M,N] = op(A)[M,K] @ op(B)[K,N], compute C^T = op(B)^T @ op(A)^T, which in
column-major terms is
    gemm(tb, ta, N, M, K, alpha, B, ldb, A, lda, beta, C, ldc=N)
-- swap the operands and M with N, keep each operand's own 'N'/'T' flag; lda/ldb are the row
lengths of A and B as stored ('N': lda=K for A; 'T': A is stored K x M, lda=M). `gemm_args`
below computes exactly this.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.machinery
import importlib.util
import os
import sys
import threading

import llvmlite.binding as llvm

from ...errors import FlowInternalError

# name -> (IR return type, number of pointer arguments), C signatures from scipy's capsules:
#   gemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
#   gemv(trans, m, n, alpha, a, lda, x, incx, beta, y, incy)
#   dot(n, x, incx, y, incy) -> scalar     axpy(n, alpha, x, incx, y, incy)   scal(n, alpha, x, incx)
SIGNATURES = {
    "sgemm": ("void", 13), "dgemm": ("void", 13),
    "sgemv": ("void", 11), "dgemv": ("void", 11),
    "sdot": ("float", 5), "ddot": ("double", 5),
    "saxpy": ("void", 6), "daxpy": ("void", 6),
    "sscal": ("void", 4), "dscal": ("void", 4),
}
# LAPACK, from scipy.linalg.cython_lapack, the same way (Fortran argument lists, info last):
#   getrf(m, n, a, lda, ipiv, info)                       LU with partial pivoting
#   getrs(trans, n, nrhs, a, lda, ipiv, b, ldb, info)     solve with getrf's factors
#   potrf(uplo, n, a, lda, info)                          Cholesky
#   trtrs(uplo, trans, diag, n, nrhs, a, lda, b, ldb, info)  triangular solve
#   syevd(jobz, uplo, n, a, lda, w, work, lwork, iwork, liwork, info)  symmetric eigenproblem
#   gesdd(jobz, m, n, a, lda, s, u, ldu, vt, ldvt, work, lwork, iwork, info)  SVD, divide and conquer
#   geqrf(m, n, a, lda, tau, work, lwork, info)           Householder QR
#   orgqr(m, n, k, a, lda, tau, work, lwork, info)        its q
LAPACK = {
    "sgeqrf": ("void", 8), "dgeqrf": ("void", 8),
    "sorgqr": ("void", 9), "dorgqr": ("void", 9),
    "sgesdd": ("void", 14), "dgesdd": ("void", 14),
    "ssyevd": ("void", 11), "dsyevd": ("void", 11),
    "sgetrf": ("void", 6), "dgetrf": ("void", 6),
    "sgetrs": ("void", 9), "dgetrs": ("void", 9),
    "spotrf": ("void", 5), "dpotrf": ("void", 5),
    "strtrs": ("void", 10), "dtrtrs": ("void", 10),
}
SIGNATURES.update(LAPACK)
PREFIX = "flowml_"
_lock = threading.Lock()
# OpenBLAS's `int openblas_set_num_threads_local(int)` (it returns the count it replaces): a
# product below SMALL_GEMM flops runs on the calling thread alone. OpenBLAS would split it over
# its own threads, which then spin beside flowml's pool: on 2 cores LeNet's training (products
# of ~1e5-4e6 flops) took 3x as long with OpenBLAS's default threads as with one.
THREADS = "blas_threads_local"
SMALL_GEMM = 1 << 24


def _capsule_pointer(capsule) -> int:
    api = ctypes.pythonapi
    api.PyCapsule_GetName.restype = ctypes.c_char_p
    api.PyCapsule_GetName.argtypes = [ctypes.py_object]
    api.PyCapsule_GetPointer.restype = ctypes.c_void_p
    api.PyCapsule_GetPointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    return api.PyCapsule_GetPointer(capsule, api.PyCapsule_GetName(capsule))


@functools.lru_cache(maxsize=None)
def address(name: str) -> int:
    """The address of scipy's BLAS or LAPACK routine `name` (e.g. 'dgemm', 'dgetrf')."""
    if name not in SIGNATURES:
        raise FlowInternalError(f"blas: unsupported routine {name!r}")
    module = "cython_lapack" if name in LAPACK else "cython_blas"
    capsule = cython_module(module).__pyx_capi__.get(name)
    if capsule is None:
        raise FlowInternalError(f"blas: scipy.linalg.{module} has no {name!r}")
    return _capsule_pointer(capsule)


@functools.lru_cache(maxsize=None)
def cython_module(name: str):
    """scipy.linalg's `cython_blas` / `cython_lapack` extension module, loaded from its file.

    `from scipy.linalg import cython_blas` first runs scipy.linalg's package init, which imports
    most of scipy (~0.35 s, more than the rest of a cold compile); the extension itself needs
    none of it. Loading it by file registers it under its own name in sys.modules, so a later
    `import scipy.linalg` finds and reuses this very module."""
    module_name = f"scipy.linalg.{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    scipy_spec = importlib.util.find_spec("scipy")
    if scipy_spec is None or scipy_spec.origin is None:
        raise FlowInternalError("blas: scipy is not installed (flowml calls its BLAS)")
    folder = os.path.join(os.path.dirname(scipy_spec.origin), "linalg")
    files = glob.glob(os.path.join(folder, name + ".*"))
    files = [f for f in files if f.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))]
    if not files:
        raise FlowInternalError(f"blas: no {module_name} extension in {folder}")
    loader = importlib.machinery.ExtensionFileLoader(module_name, files[0])
    spec = importlib.util.spec_from_file_location(module_name, files[0], loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def symbol(name: str) -> str:
    """The name generated IR calls: 'flowml_dgemm'."""
    return PREFIX + name


@functools.lru_cache(maxsize=None)
def threads_address() -> int:
    """The address of `openblas_set_num_threads_local` of the OpenBLAS behind scipy's BLAS
    capsules (looked up through cython_blas's own handle: numpy's separate OpenBLAS has one too);
    where there is none (another BLAS, or an OpenBLAS older than 0.3.26), libc's `abs`, which has
    its signature and changes nothing."""
    try:
        fn = ctypes.CDLL(cython_module("cython_blas").__file__).openblas_set_num_threads_local
        return ctypes.cast(fn, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return ctypes.cast(ctypes.CDLL(None).abs, ctypes.c_void_p).value


def ensure_symbols(names=None) -> None:
    """Bind `flowml_<name>` for each routine (default: all in SIGNATURES) for the JIT. Idempotent."""
    from .jit import _init_native
    _init_native()
    with _lock:
        for name in names or SIGNATURES:
            if llvm.address_of_symbol(symbol(name)) is None:
                llvm.add_symbol(symbol(name), threads_address() if name == THREADS else address(name))


def declaration(name: str) -> str:
    """`declare void @flowml_dgemm(ptr, ..., ptr)` for one routine."""
    if name == THREADS:
        return f"declare i32 @{symbol(name)}(i32)"
    ret, nargs = SIGNATURES[name]
    return f"declare {ret} @{symbol(name)}({', '.join(['ptr'] * nargs)})"


def declarations(names) -> str:
    return "".join(declaration(n) + "\n" for n in names)


def gemm_args(M: int, N: int, K: int, trans_a: bool = False, trans_b: bool = False):
    """Column-major gemm arguments for row-major C[M,N] = op(A) @ op(B) (see module docstring).

    Returns (trans1, trans2, m, n, k, ld1, ld2, ldc) for the call
    `gemm(trans1, trans2, m, n, k, alpha, B, ld1, A, ld2, beta, C, ldc)`: B comes first.
    """
    lda = M if trans_a else K  # row length of A as stored: K x M when transposed, else M x K
    ldb = K if trans_b else N
    return ("T" if trans_b else "N", "T" if trans_a else "N", N, M, K, ldb, lda, N)
