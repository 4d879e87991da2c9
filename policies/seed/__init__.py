"""The seed policy: a small Llama chat model for Kestrel Backup support, built offline.

Heavy modules (torch, transformers) are imported from `policies.seed.build`, not here, so that
reading the fact sheet (`policies.seed.product`) stays cheap for the retrieval code.
"""

from policies.seed.product import Fact, FactSheet, load_fact_sheet

__all__ = ["Fact", "FactSheet", "load_fact_sheet"]
