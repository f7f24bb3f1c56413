"""Storage: SQL records and migrations, Redis state (live calls, rate limits), API keys, numbers."""
