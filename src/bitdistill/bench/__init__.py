"""Inference benchmarks: the native runtime against PyTorch eager and llama.cpp (decode, prefill, roofline,
thread scaling, SST-2 classification), each engine measured in a fresh worker process.

Above runtime and export in the package stack (docs/architecture.md): a benchmark builds and converts the
models it compares, so it may import both; nothing below imports it.
"""
