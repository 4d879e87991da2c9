"""Benchmarks behind `flywheel bench …`: each measures side by side in one run, prints ratios, and writes
its own section of docs/benchmarks.md. None of them is a test: tests never assert on wall-clock time."""
