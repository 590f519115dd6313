"""Benchmarks (scripts, never timed tests): bench.py per engine, compare.py against Nchan."""
