"""LLVM backend for flowml: graphs compiled to native code through llvmlite's MCJIT.

Infrastructure modules (each usable on its own):
  jit       target machine, O3 pipeline, `JitModule` (IR text -> callable native code)
  cache     persistent on-disk cache of compiled object code
  vecmath   transcendental calls that the loop vectorizer maps onto glibc's libmvec
  blas      scipy's BLAS (gemm/gemv/dot/axpy) as function pointers callable from IR
  parallel  `flowml_parallel_for` over pthreads, and the thread-count policy
"""
