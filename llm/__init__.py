"""LLM backends (local llama.cpp, OpenAI-compatible streaming) and fine-tuning.

Coming with the dialogue issue.
"""
