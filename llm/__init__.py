"""LLM backends (local llama.cpp, OpenAI-compatible streaming) and fine-tuning: coming with the dialogue issue."""
