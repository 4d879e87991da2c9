"""Shipped preference examples for the initial reward head (see policies.reward.shipped)."""
