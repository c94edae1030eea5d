"""minimoe: a small DeepSeek-style mixture-of-experts, built step by step."""
__version__ = "0.1.0"
