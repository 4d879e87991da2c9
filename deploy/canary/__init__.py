"""The canary controller: a rollout plan, per-version metrics, a sequential statistical analysis, and
a loop that steps a canary's weight up, rolls it back or promotes it through the operator API."""
