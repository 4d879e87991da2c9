"""Grounding: a hybrid (BM25 + dense) knowledge base the gateway retrieves passages from.

Entry point for the request pipeline: ``Retriever.from_settings(settings).search(query, k)``.
"""
