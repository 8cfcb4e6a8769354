"""Verifiable tasks."""
