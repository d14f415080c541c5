"""tapct_vit3d (being built)."""

__all__: list[str] = []
