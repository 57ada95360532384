"""Generic helpers: atomic file writes, progress bars, the project's input-error type, and the
allocator settings the tools run with."""
