"""Use cases per resource: plain functions taking a session, no FastAPI, never commit."""
