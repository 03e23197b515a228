"""CLI commands, one module per command, each exposing ``command``."""
