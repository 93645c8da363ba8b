"""Benchmarks: the cost the app adds over the seed guide's direct call, as ratios and counts.

``make bench`` (``python -m benchmarks``) runs them and writes docs/benchmarks.md.
"""
