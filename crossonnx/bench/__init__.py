"""What `crossonnx bench` runs (needs the `bench` extra): throughput against PyTorch and the peers, each engine in a
fresh process, and accuracy per precision. The project's experiments and the targets its results are judged by live
in benchmarks/lab, outside the wheel."""
