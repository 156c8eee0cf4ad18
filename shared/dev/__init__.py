"""Development tooling: local stand-ins for the cluster (dev broker, SeaweedFS, PgBouncer), the
`otel-worker dev` runner, the demo, synthetic tracks and the manifest models they read.

Not part of the image: the wheel the image installs excludes this package.
"""
