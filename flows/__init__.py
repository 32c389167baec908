"""Prefect flows for streamsvd: thin wrappers that sequence library calls.

Tasks pass store paths, versions and file paths between them, never arrays,
and caching is off (``cache_policy=NONE``): every task's effect is already
idempotent in the store (batch log, one commit per step).
"""
