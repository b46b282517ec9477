"""Benchmarks.

The report, `python -m bench` (bench/__main__.py): this service against the systems it is measured beside
(bench/systems/: the naive FastAPI server, infinity's launcher) and ONNX Runtime alone (bench/limits.py), with
the load generators (bench/load.py, bench/wrk.py), the packed graph's comparison (bench/packed.py) and the one
server harness (bench/servers.py). The per-task report is `python -m bench.tasks`, the GPU's `python -m
bench.gpu`. Studies of one question each are in bench/studies/. Results: bench/results/.
"""
