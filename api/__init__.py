"""The FastAPI service: scoring and health."""
