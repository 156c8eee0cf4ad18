"""Operator commands that ship in the image: `otel-worker analyze` and the file readers it
uses, and the gRPC client behind `otel-worker submit`/`jobs`/`job`."""
