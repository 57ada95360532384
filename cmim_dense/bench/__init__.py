"""Benchmarks of the toolkit: step times and deployed-model latencies on this machine."""
