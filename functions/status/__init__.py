"""The status function."""
