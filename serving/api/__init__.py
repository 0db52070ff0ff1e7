"""The OpenAI-compatible HTTP API: protocol parsing, routes, SSE and the error envelope."""
