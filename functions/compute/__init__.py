"""The compute function."""
