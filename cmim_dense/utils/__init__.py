"""Generic helpers: atomic file writes, progress bars, the project's input-error type, the
allocator settings the tools run with, and jobs in a fresh process."""
