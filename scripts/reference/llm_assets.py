"""Reference cases for the real LLM assets (placeholder: filled in by the issue-5 work)."""


def register(case) -> None:
    """Registers this module's cases with generate.py's ``@case`` decorator."""
