"""Offline measurement, apart from the runtime: step-time benchmarks, the GPU check, and the
machine a timing ran on (:mod:`.machine`)."""
