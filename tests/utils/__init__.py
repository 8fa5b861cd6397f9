"""Helpers shared by the test packages (and the benchmarks that build the same fixtures)."""
