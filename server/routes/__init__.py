"""Route modules: ``openai`` (OpenAI-compatible), ``admin`` (adapters, registry), ``health``."""
