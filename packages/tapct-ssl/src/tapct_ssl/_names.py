"""Parameter names without the prefixes that wrappers add (private).

``DistributedDataParallel`` adds ``module.``, ``torch.compile`` adds ``_orig_mod.``,
FSDP adds ``_fsdp_wrapped_module.`` and activation checkpointing
``_checkpoint_wrapped_module.``. Stripping them lets parameter groups and the EMA
treat a wrapped model exactly like the bare one.
"""

from __future__ import annotations

WRAPPER_PREFIXES: tuple[str, ...] = (
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
)


def strip_wrapper_prefixes(name: str) -> str:
    """Remove every wrapper component from a dotted parameter name.

    Args:
        name: a name from ``named_parameters()``, e.g.
            ``"module._orig_mod.student.backbone.blocks.0.attn.qkv.weight"``.

    Returns:
        The name of the same parameter on the bare model, e.g.
        ``"student.backbone.blocks.0.attn.qkv.weight"``.
    """
    parts = name.split(".")
    wrappers = {p.rstrip(".") for p in WRAPPER_PREFIXES}
    return ".".join(p for p in parts if p not in wrappers)
