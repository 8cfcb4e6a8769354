"""Triton kernels and their torch fallbacks; installed as ``weakstrong.kernels``."""
