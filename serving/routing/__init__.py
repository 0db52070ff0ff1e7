"""Routing: which engine serves a request sent to a model group."""
