"""The submit function."""
