"""Input and output filters: PII redaction, prompt-injection/jailbreak detection, blocklists, and
streaming-safe output checks. Each filter returns a verdict (allow / redact / block)."""
