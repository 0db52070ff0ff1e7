"""Metrics and logs shared by every layer."""
