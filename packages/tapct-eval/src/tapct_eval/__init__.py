"""tapct_eval (being built)."""

__all__: list[str] = []
