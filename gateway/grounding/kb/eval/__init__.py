"""The retrieval evaluation set (``qa.jsonl``); a package so that it ships as package data."""
