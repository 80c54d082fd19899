"""Benchmarks: throughput and latency against PyTorch and the ONNX peers (needs the `bench` extra)."""
