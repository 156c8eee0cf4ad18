"""The ingress function."""
