"""Exporters: one per target runtime."""
