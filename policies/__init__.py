"""Policy backends and their lifecycle: the locally built seed model, the supervised vLLM server and its
async client (with runtime LoRA), the policy registry, and reward scorers."""
