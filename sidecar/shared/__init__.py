"""Shared state across processes and replicas, on Redis (SPEC section 6)."""
