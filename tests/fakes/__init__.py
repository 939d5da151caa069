"""Test doubles of the LLM providers: real HTTP servers on loopback (tests and bench/)."""

# The credentials the fixtures give the fake providers, and the models they price.
UPSTREAM_CREDENTIAL = "sk-upstream-test-credential-0123456789"
MODEL = "claude-test-4-5"
OPENAI_CREDENTIAL = "sk-openai-upstream-test-credential-9876"
OPENAI_MODEL = "gpt-test-5"
