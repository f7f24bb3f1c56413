"""Language understanding: embeddings, intents, slots, sentiment and PII."""
