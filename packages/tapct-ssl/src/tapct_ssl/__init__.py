"""tapct_ssl (being built)."""

__all__: list[str] = []
