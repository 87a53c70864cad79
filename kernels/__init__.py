"""Triton kernels (shipped as pyrag.kernels)."""
