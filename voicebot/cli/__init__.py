"""The `voicebot` command line."""
