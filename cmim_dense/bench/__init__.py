"""Offline measurement, apart from the runtime: step-time benchmarks and the GPU check."""
