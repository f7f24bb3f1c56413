"""Storage: SQL records and their migrations, Redis state (live calls, rate limits), API keys, number protection."""
