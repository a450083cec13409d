"""Packed-model CPU runtime: native int8 x ternary kernels and a decode engine (numpy + ctypes, no torch)."""
