"""sgl-lang: a language and runtime for LLM programs."""

__version__ = "0.1.0"
