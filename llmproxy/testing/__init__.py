"""Test doubles for what llmproxy does not own: the LLM providers."""
