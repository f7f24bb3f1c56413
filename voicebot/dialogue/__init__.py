"""What the bot says: the per-call dialogue processor, its policy, generation and memory."""
