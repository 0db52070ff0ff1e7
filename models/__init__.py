"""Model artefacts for the serving platform: built-in CPU models, the catalog, source resolution."""
