"""Benchmarks (not tests): `python bench/<name>.py`; each prints its figures and its command."""
