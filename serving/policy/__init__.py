"""Gateway policies: API keys, limits, budgets, kill switch, cache, PII, audit."""
