"""Engines: how the gateway reaches a model (Ray Serve LLM deployments today; cloud APIs later)."""
