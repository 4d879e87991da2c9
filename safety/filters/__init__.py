"""The filters a :class:`safety.chain.SafetyChain` runs; one module per filter."""
