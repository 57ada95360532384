"""Generic helpers: atomic file writes, progress bars, the project's input-error type."""
