"""LLM plumbing for any task that asks a language model (describing heads, judging descriptions).

client (an OpenAI-compatible client: retries, JSON mode, an on-disk answer cache keyed by the exact
request), server (a local OpenAI-compatible server, started and stopped for a run). It knows nothing
of heads or prompts: salient/ builds the messages and parses the answers. It imports only
mapslib.errors and mapslib.foundation.
"""
