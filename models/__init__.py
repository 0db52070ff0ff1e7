"""Model artefacts for the serving platform: built-in CPU models, the production catalog, source resolution."""
