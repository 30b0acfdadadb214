"""Benchmarks: each module writes JSON (and a PNG plot) under bench/results/."""
