"""``tapct models``: the presets with parameter counts and token counts."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["model_rows", "models_command"]


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def model_rows() -> list[dict[str, Any]]:
    """Describe every ``tapct_vit3d`` preset.

    Returns:
        One dict per preset: ``name``, ``patch`` (pd, ph, pw), ``input`` (D, H, W),
        ``width``, ``depth``, ``heads``, ``params`` (count), ``tokens`` (patch tokens of
        one input window) and ``tokens_300`` (patch tokens of a 300-slice volume resized
        to (300, 224, 224), the paper's check number: 58,800 for patch (4, 8, 8)).
    """
    from tapct_vit3d import create_model, list_models, preset_config

    rows = []
    for name in list_models():
        cfg = preset_config(name)
        # Exact count without building the full model: every block has the same size, so
        # count a 1-block and a 2-block model and extrapolate (fast even for ViT-B).
        p1, p2 = (_count(create_model(name, depth=d)) for d in (1, 2))
        params = p1 + (cfg["depth"] - 1) * (p2 - p1)
        patch, size = tuple(cfg["patch_size"]), tuple(cfg["img_size"])
        tokens = math.prod(s // p for s, p in zip(size, patch, strict=True))
        tokens_300 = (300 // patch[0]) * (224 // patch[1]) * (224 // patch[2])
        rows.append(
            {
                "name": name,
                "patch": patch,
                "input": size,
                "width": cfg["embed_dim"],
                "depth": cfg["depth"],
                "heads": cfg["num_heads"],
                "params": params,
                "tokens": tokens,
                "tokens_300": tokens_300,
            }
        )
    return rows


def models_command(console: Any) -> None:
    """Print the preset table.

    Args:
        console: A rich console.
    """
    from rich.table import Table

    header = ("name", "patch (d,h,w)", "input (D,H,W)", "width/depth/heads", "params",
              "tokens/window", "tokens (300,224,224)")  # fmt: skip
    rows = [
        (
            r["name"],
            "x".join(map(str, r["patch"])),
            "x".join(map(str, r["input"])),
            f"{r['width']}/{r['depth']}/{r['heads']}",
            f"{r['params'] / 1e6:.2f}M",
            f"{r['tokens']:,}",
            f"{r['tokens_300']:,}",
        )
        for r in model_rows()
    ]
    table = Table(title="tapct_vit3d presets (TAP-CT Table 3 + CPU sizes)")
    for i, col in enumerate(header):
        # Never shorten a cell: the names are what users copy (rich would cut them to
        # "tap_nano…" in a pipe or an 80-column terminal).
        width = max(len(col), *(len(row[i]) for row in rows))
        table.add_column(col, justify="left" if i == 0 else "right", min_width=width,
                         no_wrap=True)  # fmt: skip
    for row in rows:
        table.add_row(*row)
    width = sum(c.min_width or 0 for c in table.columns) + 3 * len(header) + 1
    console.print(table, width=max(console.width, width))
