"""Offline measurements: step-time benchmarks of the binarizers and the pipelines."""
