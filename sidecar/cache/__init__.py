"""The response cache (SPEC section 7): identical requests answered without an upstream call."""
