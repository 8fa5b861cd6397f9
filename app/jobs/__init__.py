"""Orchestration that spans training and serving: demos, retraining and (soon) batch jobs.

The one place besides the CLI that may import `training`, and only inside functions, so the
service process never loads torch. Use cases stay in `app/services/` (take a session, never
commit); the jobs here open their own sessions, commit, and report progress.
"""
