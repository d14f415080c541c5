"""tapct_data (being built)."""

__all__: list[str] = []
