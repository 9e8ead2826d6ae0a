"""Service files for running the edge-seg watch daemon (see README: Run it as a service)."""
