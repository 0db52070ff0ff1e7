"""Model rollouts driven from the MLflow registry: specs and registry, traffic plans, analysis, appliers, the
controller's state machine."""
