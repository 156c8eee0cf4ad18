"""The Knative functions: each folder is one service, deployed from the same image."""
