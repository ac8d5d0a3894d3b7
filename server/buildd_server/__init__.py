"""buildd-server: the build daemon (see docs/architecture.md)."""
