"""Benchmarks: runnable scripts (`python bench/<name>.py`) that print ratios against a baseline
measured in the same run and write their results to `bench/results/<name>.json`."""
