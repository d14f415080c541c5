"""The Hugging Face model card of an exported backbone: one builder for every export.

``tapct export`` and the export at the end of ``tapct pretrain`` both write
``README.md`` beside ``model.safetensors`` through ``save_pretrained(model_card=...)``
(``tapct_vit3d.hub.write_model_card``: YAML metadata, the training config, the data
statistics).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tapct_app.config_file import config_to_dict
from tapct_app.train.config import PretrainConfig

__all__ = ["data_statistics", "model_card"]


def data_statistics(
    cfg: PretrainConfig, iteration: int, samples_seen: int, run_dir: Path
) -> dict[str, Any]:
    """The model card's data table: sources, scans, samples seen, slab, crops, intensities.

    Args:
        cfg: The run's config.
        iteration: Iterations trained.
        samples_seen: Samples the run has drawn.
        run_dir: The run directory (its ``cache/*.zarr`` stores are counted when present).

    Returns:
        ``{row name: value}``.
    """
    from tapct_data import is_zarr_store, open_stores

    n = cfg.data.normalize
    stats: dict[str, Any] = {
        "sources": ", ".join(cfg.data.sources) or "built-in CT phantoms (demo)",
        "iterations trained": f"{iteration} of {cfg.train.iterations}",
        "samples seen": samples_seen,
        "slab (slices x H0 x W0)": f"{cfg.data.slab_depth} x {cfg.data.in_plane_size[0]} x "
                                   f"{cfg.data.in_plane_size[1]}",
        "global / local crops (D, H, W)": f"{tuple(cfg.crops.global_crops_size)} / "
                                          f"{tuple(cfg.crops.local_crops_size)}",
        "intensity window (HU)": f"[{n.lower}, {n.upper}], mean {n.mean}, std {n.std}",
    }  # fmt: skip
    stores = [Path(s) for s in cfg.data.sources if is_zarr_store(Path(s))]
    stores += sorted((run_dir / "cache").glob("*.zarr"))
    try:
        if stores:
            stats["scans (in the stores)"] = len(open_stores(stores))
    except (OSError, ValueError):
        pass  # stores moved since training: the sources above still say what was used
    return stats


def model_card(
    cfg: PretrainConfig,
    iteration: int,
    samples_seen: int,
    run_dir: Path,
    *,
    which: str = "teacher",
    title: str = "model",
) -> dict[str, Any]:
    """The ``model_card`` argument of ``save_pretrained`` for a backbone of a run.

    Args:
        cfg: The run's config.
        iteration: Iterations trained.
        samples_seen: Samples the run has drawn.
        run_dir: The run directory.
        which: ``teacher`` or ``student``.
        title: The card's title (the model folder's name).

    Returns:
        ``{"base_model", "training", "data", "tags", "title"}``.
    """
    return {
        "base_model": cfg.model.init,
        "training": config_to_dict(cfg),
        "data": data_statistics(cfg, iteration, samples_seen, run_dir),
        "tags": [cfg.model.name, f"{which}-backbone"],
        "title": title,
    }
