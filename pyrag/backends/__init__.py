"""The implementations of the pyrag ops, one module per backend, each registering its own
(pyrag.ops._registry.register_impl):

| backend     | module            | runs                                                    |
| ----------- | ----------------- | ------------------------------------------------------- |
| "reference" | backends/reference.py | pyrag.reference: plain PyTorch, the executable spec |
| "cpu"       | backends/cpu.py   | pyrag._C (csrc/cpu: C++ SIMD, run-time ISA dispatch)    |
| "triton"    | backends/triton.py | pyrag.kernels (kernels/), on CUDA or TRITON_INTERPRET=1 |
| "cuda", "cuda_emu" | backends/cuda.py | pyrag._cuda (csrc/cuda), and its host emulation   |

Importing a backend module imports no compiled extension and no triton: each
implementation imports what it needs when it first runs.
"""

from pyrag.backends import cpu, cuda, reference, triton  # noqa: F401  (register the implementations)
