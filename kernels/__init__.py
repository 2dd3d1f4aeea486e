"""Triton kernels of rissole_trt, shipped as ``rissole_trt.kernels``.

Each kernel module holds its plain PyTorch reference, the Triton kernel, its launcher and the
public function, so tests import the kernel and its reference from one place. Kernels run on CPU
tensors under ``TRITON_INTERPRET=1``.
"""
