"""Benchmark suite of the initializer search: ``python -m benchmarks.run`` runs it.

Each module measures one question (pipeline overhead, start-up, throughput, pruning,
memory, worker scaling, GPU) and returns ``common.Figure`` rows. Every timing is a
ratio against a reference measured in the same run, because the machines this project
runs on are shared and their absolute speed varies from minute to minute.
"""
