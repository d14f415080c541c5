"""Parameter names without the prefixes that wrappers add (private).

``DistributedDataParallel`` adds a leading ``module.``, ``torch.compile`` adds
``_orig_mod.``, FSDP adds ``_fsdp_wrapped_module.`` (also on inner wrapped submodules)
and activation checkpointing ``_checkpoint_wrapped_module.``. Stripping them lets
parameter groups and the EMA treat a wrapped model exactly like the bare one.
"""

from __future__ import annotations

#: Wrapper components that never name a real submodule: removed wherever they appear.
UNIQUE_WRAPPERS: frozenset[str] = frozenset(
    {"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"}
)


def strip_wrapper_prefixes(name: str) -> str:
    """Remove wrapper components from a dotted parameter name.

    ``module`` (DDP) is removed only as a leading component (possibly after other
    wrappers, e.g. ``_orig_mod.module.``), so a real submodule called ``module`` deeper
    in the model keeps its name; the other wrapper components are removed anywhere.

    Args:
        name: a name from ``named_parameters()``, e.g.
            ``"module._orig_mod.student.backbone.blocks.0.attn.qkv.weight"``.

    Returns:
        The name of the same parameter on the bare model, e.g.
        ``"student.backbone.blocks.0.attn.qkv.weight"``.
    """
    parts = name.split(".")
    start = 0
    while start < len(parts) - 1 and (parts[start] == "module" or parts[start] in UNIQUE_WRAPPERS):
        start += 1
    return ".".join(p for p in parts[start:] if p not in UNIQUE_WRAPPERS)
