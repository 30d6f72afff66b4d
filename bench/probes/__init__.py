"""Probes: narrow measurements behind design decisions (`python -m bench.probes.<name>`)."""
