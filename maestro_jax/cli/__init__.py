"""Thin command-line entry points; all logic lives in the library where tests can call it."""
