"""The ``tapct`` command line (Typer). Thin: parse, build configs, call, report.

Heavy imports (torch, the four libraries) happen inside the commands so that
``tapct --help`` is instant. A user's mistake ends with ``tapct: error: <one line>`` on
stderr and exit status 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import os
import sys
import typing
from pathlib import Path
from typing import Annotated, Any

import typer

from tapct_app.errors import EXIT_USER_ERROR, UserError, one_line, with_hint

__all__ = ["app", "main"]

#: Help metavars by parameter name (an option's or an argument's Python name); every
#: other parameter gets one from its type (see ``_readable_metavar``).
METAVARS = {
    "config": "CONFIG",
    "preset": "PRESET",
    "model": "MODEL",
    "device": "DEVICE",
    "roi": "D,H,W",
    "in_plane": "H,W",
    "seeds": "S,S,...",
    "shard": "K/N",
    "set_": "KEY=VALUE",
    "include": "GLOB",
    "exclude": "GLOB",
    "on_error": "skip|stop",
    "fmt": "safetensors|zarr",
    "which": "teacher|student",
    "inputs": "SCAN",
    "task_file": "TASK",
    "checkpoint": "CHECKPOINT",
}


def _kind(param: Any) -> str:
    """``path``, ``integer``, ``float``, ``boolean`` or ``text`` (of a list: its items)."""
    desc = getattr(param, "type_descriptor", None)  # Typer >= 0.20
    if desc is None:
        return str(getattr(getattr(param, "type", None), "name", "text"))
    item = desc.annotation
    if typing.get_origin(item) is list:
        item = typing.get_args(item)[0]
    if isinstance(item, type) and issubclass(item, Path):
        return "path"
    return {int: "integer", float: "float", bool: "boolean"}.get(item, "text")


def _readable_metavar(param: Any) -> None:
    """Help shows ``PATH``, ``N``, ``D,H,W`` or a name, never Python types (``<list[Path]>``).

    The metavar comes from :data:`METAVARS`, else from the type: flags show none, paths
    ``PATH``, integers ``N``, floats ``X``, other text the parameter's name in capitals.
    Arguments show their name (``SCAN``) and, in the type column, ``PATH`` or ``PATH...``.
    """
    kind = _kind(param)
    if param.metavar is None:
        if getattr(param, "is_flag", False) or kind == "boolean":
            param.metavar = ""
        elif param.name in METAVARS:
            param.metavar = METAVARS[param.name]
        elif kind == "path" and param.param_type_name == "option":
            param.metavar = "PATH"
        elif kind == "integer":
            param.metavar = "N"
        elif kind == "float":
            param.metavar = "X"
        else:
            param.metavar = (param.name or "value").upper()
    if param.param_type_name == "argument":  # the type column of the help table
        shown = ("PATH" if kind == "path" else "") + ("..." if param.nargs != 1 else "")
        param.display_type_rich = lambda ctx: shown or None  # type: ignore[method-assign]


def _with_readable_metavars(command: Any) -> None:
    """Make ``command.get_params`` (what help lists, ``--help`` included) readable."""
    get_params = command.get_params

    def readable(ctx: Any) -> list[Any]:
        params = get_params(ctx)
        for param in params:
            _readable_metavar(param)
        return params

    command.get_params = readable  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():  # a group's own commands
        if sub is not command:
            _with_readable_metavars(sub)


class _Group(typer.core.TyperGroup):
    """The root command group: readable metavars on every command's parameters."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        _with_readable_metavars(self)


app = typer.Typer(
    name="tapct",
    help="TAP-CT: 3D DINOv2 pretraining, embedding and benchmarking of CT foundation models.",
    no_args_is_help=True,
    add_completion=True,  # tapct --install-completion / --show-completion (shell detected)
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    cls=_Group,
)

_STATE = {"debug": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"tapct {version('tapct')}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for errors (and library warnings).")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """TAP-CT command line."""
    _STATE["debug"] = debug or bool(os.environ.get("TAPCT_DEBUG"))


def _console():
    """THE console of every command: user text (paths, names) is printed literally.

    Markup is off, so a path such as ``out[ct].zarr`` or ``a[/b]`` is shown as typed (no
    ``MarkupError``, nothing swallowed); commands colour whole lines with ``style=``. Soft
    wrap: a long line is never broken inside a path (logs and pipes keep it whole).
    """
    from rich.console import Console

    # Markup off: user paths print literally ("out[ct].zarr", "[/b]"). Lines are never
    # wrapped or cut by rich (a path is never split, a log line is whole).
    return Console(stderr=False, highlight=False, markup=False, soft_wrap=True)


def _runtime_policy() -> None:
    """The app's warning and logging policy (libraries never set these)."""
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    def show(message, category, filename, lineno, file=None, line=None):
        text = one_line(message).replace("(allow_non_ct=True)", "(--allow-non-ct)")
        print(f"tapct: warning: {text}", file=file or sys.stderr)

    if not _STATE["debug"]:
        # huggingface_hub logs each failed request (and retries) at WARNING; the failure
        # itself reaches the user as the command's one error line.
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
        warnings.showwarning = show
        # Known noisy third-party warnings that say nothing to a user of the CLI.
        warnings.filterwarnings("ignore", category=FutureWarning, module="monai")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")


def _parse_triplet(text: str | None, option: str) -> tuple[int, int, int] | None:
    if text is None:
        return None
    parts = text.replace("x", ",").split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"{option} {text!r}: expected three integers D,H,W") from None
    if len(values) != 3 or any(v <= 0 for v in values):
        raise UserError(f"{option} {text!r}: expected three positive integers D,H,W")
    return values  # type: ignore[return-value]


#: ``--intensity-stats`` of the commands that normalise scans.
_INTENSITY_HELP = (
    "JSON with the clip window and mean/std in HU (a `tapct fingerprint` output, or "
    "lower/upper/mean/std)."
)
_MODEL_INTENSITY_HELP = _INTENSITY_HELP + " Default: the statistics recorded with the model."

#: ``--allow-non-ct`` of every command that reads scans (``tapct_data.read_volume``'s switch).
_AllowNonCT = Annotated[
    bool,
    typer.Option(
        "--allow-non-ct",
        help="Read volumes that do not look like CT in HU (MR, ...) anyway, with a warning.",
    ),
]

#: ``--include`` / ``--exclude`` of every command that takes scans (``tapct_data.expand_inputs``).
_Include = Annotated[
    list[str] | None,
    typer.Option(
        "--include",
        help="Glob pattern (repeatable): keep only files whose path inside its input, or "
        "whose name, matches one (* also matches /), e.g. '*/ct.nii.gz'.",
    ),
]
_Exclude = Annotated[
    list[str] | None,
    typer.Option(
        "--exclude",
        help="Glob pattern (repeatable): leave out matching files, e.g. 'segmentations/*' "
        "or 'labelsTr/*'.",
    ),
]


# --------------------------------------------------------------------------- pretrain


@app.command()
def pretrain(
    config: Annotated[
        str | None,
        typer.Option(
            "--config", "-c", help="YAML/TOML config file or a shipped config name (tapct configs)."
        ),
    ] = None,
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data",
            "-d",
            help="Scans, folders, list files, zarr stores or folders of stores (repeatable); "
            "all together are one dataset.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Run directory.")
    ] = None,
    preset: Annotated[
        str | None, typer.Option("--preset", "-p", help="Model preset (tapct models).")
    ] = None,
    iterations: Annotated[int | None, typer.Option(help="Optimizer steps of the run.")] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Samples per device per micro-batch.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every random choice.")] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--no-resume", help="Continue from OUTPUT's last checkpoint.")
    ] = True,
    device: Annotated[
        str | None, typer.Option(help="auto (default), cpu, cuda or cuda:N.")
    ] = None,
    stop_after: Annotated[
        int | None,
        typer.Option(
            help="Stop after this many iterations of this invocation (schedules still span "
            "--iterations); resume later with the same command."
        ),
    ] = None,
    on_error: Annotated[
        str | None,
        typer.Option("--on-error", help="Bad scans in --data: skip (default, listed) or stop."),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override any config value: section.key=value (repeatable)."),
    ] = None,
    intensity_stats: Annotated[
        Path | None,
        typer.Option(help=_INTENSITY_HELP + " Sets data.normalize; default: the paper's."),
    ] = None,
    include: _Include = None,
    exclude: _Exclude = None,
    init: Annotated[
        str | None,
        typer.Option(
            "--init",
            metavar="SOURCE",
            help="Start student and teacher from weights: a tapct model folder, a hub id "
            "owner/name, or a state-dict file (.pth/.pt/.bin/.safetensors; a 2D DINOv2/timm "
            "ViT is inflated to 3D). A resumed run keeps its checkpoint's weights.",
        ),
    ] = None,
) -> None:
    """3D DINOv2 pretraining (paper Table 7). With no arguments: a short CPU demo on phantoms.

    Scan files and DICOM folders are first converted into a zarr store cache under
    OUTPUT/cache. Checkpoints go to OUTPUT/checkpoints, the teacher backbone is exported
    to OUTPUT/model (model.safetensors + config.json). Multi-GPU:
    torchrun --nproc_per_node N -m tapct_app pretrain ...
    """
    _runtime_policy()
    from tapct_app.pretrain import pretrain_command

    try:
        pretrain_command(
            config=config,
            data=[str(p) for p in data or []],
            output=output,
            preset=preset,
            iterations=iterations,
            batch_size=batch_size,
            seed=seed,
            resume=resume,
            device=device,
            stop_after=stop_after,
            overrides=[
                *([f"data.on_error={on_error}"] if on_error else []),
                *([f"data.include={json.dumps(include)}"] if include else []),
                *([f"data.exclude={json.dumps(exclude)}"] if exclude else []),
                *([f"model.init={json.dumps(_init_source(init))}"] if init else []),
                *(set_ or []),
            ],
            console=_console(),
            intensity_stats=intensity_stats,
        )
    except KeyboardInterrupt as exc:  # Typer turns it into exit 130 without a word
        print(f"tapct: {one_line(exc) if str(exc) else 'interrupted'}", file=sys.stderr)
        raise typer.Exit(130) from exc


def _init_source(init: str) -> str:
    """An existing local ``--init`` path made absolute (runs resume from elsewhere)."""
    path = Path(init).expanduser()
    return str(path.resolve()) if path.exists() else init


@app.command()
def export(
    checkpoint: Annotated[Path, typer.Argument(help="A checkpoint-*.pt file or a run directory.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Model directory to write.")],
    which: Annotated[
        str, typer.Option(help="teacher (default, as the paper) or student.")
    ] = "teacher",
) -> None:
    """Export a backbone from a training checkpoint (model.safetensors + config.json)."""
    _runtime_policy()
    from tapct_app.pretrain import export_command

    export_command(checkpoint, output, which, console=_console())


# --------------------------------------------------------------------------- embed


@app.command()
def embed(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Scan files, folders (walked recursively), zarr stores, .txt/.csv lists."
        ),
    ],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m",
            help="Model folder (save_pretrained), weights file, hub id owner/name (cache or "
            "download; HF_HUB_OFFLINE=1 honoured) or a preset.",
        ),
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output folder (a rerun adds to it, resumes).")
    ],
    roi: Annotated[
        str | None,
        typer.Option(help="Sliding-window size D,H,W in voxels (default: the model's input)."),
    ] = None,
    overlap: Annotated[float, typer.Option(help="Sliding-window overlap in [0, 1).")] = 0.25,
    fmt: Annotated[
        str, typer.Option("--format", help="safetensors (default) or zarr.")
    ] = "safetensors",
    in_plane: Annotated[
        str | None,
        typer.Option(help="Resize each slice to H,W first (paper: 224,224); default: keep."),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    pca: Annotated[bool, typer.Option("--pca/--no-pca", help="Write the PCA picture.")] = True,
    workers: Annotated[
        int, typer.Option(help="Scan readers ahead of the model (1: a thread; more: processes).")
    ] = 1,
    on_error: Annotated[
        str, typer.Option(help="skip (report in skipped.jsonl) or stop at the first bad scan.")
    ] = "skip",
    sw_batch_size: Annotated[int, typer.Option(help="Sliding windows per forward.")] = 4,
    intensity_stats: Annotated[Path | None, typer.Option(help=_MODEL_INTENSITY_HELP)] = None,
    include: _Include = None,
    exclude: _Exclude = None,
    allow_non_ct: _AllowNonCT = False,
) -> None:
    """Embed scans: dense patch features (E, t, h, w) and window cls tokens, plus a PCA picture.

    Resumable: scans already in OUTPUT with the same model and settings are skipped.
    """
    _runtime_policy()
    from tapct_app.embed import embed_command

    embed_command(
        inputs=inputs,
        model=model,
        output=output,
        roi=_parse_triplet(roi, "--roi"),
        overlap=overlap,
        fmt=fmt,
        in_plane=_parse_pair(in_plane, "--in-plane"),
        device=device,
        pca=pca,
        console=_console(),
        workers=workers,
        on_error=on_error,
        sw_batch_size=sw_batch_size,
        intensity_stats=intensity_stats,
        include=include or (),
        exclude=exclude or (),
        allow_non_ct=allow_non_ct,
    )


def _parse_pair(text: str | None, option: str) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        values = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        raise UserError(f"{option} {text!r}: expected two integers H,W") from None
    if len(values) != 2 or any(v <= 0 for v in values):
        raise UserError(f"{option} {text!r}: expected two positive integers H,W")
    return values  # type: ignore[return-value]


# --------------------------------------------------------------------------- benchmark


@app.command()
def benchmark(
    task_file: Annotated[Path, typer.Argument(help="Task file (YAML/JSON) for tapct_eval.")],
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            "-m",
            help="Model folder (save_pretrained), weights file, hub id owner/name (cache or "
            "download; HF_HUB_OFFLINE=1 honoured), a preset, timm:NAME, monai:NAME or "
            "module:function (options as NAME:key=value,...); repeat to compare models side "
            "by side.",
        ),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Results directory.")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds (paper: 0,1,2).")] = "0,1,2",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    intensity_stats: Annotated[Path | None, typer.Option(help=_MODEL_INTENSITY_HELP)] = None,
    allow_non_ct: _AllowNonCT = False,
) -> None:
    """Frozen-feature benchmark of six kinds (segmentation, classification, regression,
    survival, retrieval, localisation): tables, JSON/CSV, figures."""
    _runtime_policy()
    from tapct_app.benchmark import benchmark_command

    try:
        seed_list = tuple(int(s) for s in seeds.split(","))
    except ValueError:
        raise UserError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    benchmark_command(
        task_file, model, output, seed_list, device, console=_console(),
        intensity_stats=intensity_stats, allow_non_ct=allow_non_ct,
    )


# --------------------------------------------------------------------------- data tools


@app.command()
def preprocess(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Scan files, folders (walked recursively) or .txt/.csv lists."),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="The zarr store to write.")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="Processes reading scans (default: the available cores).", min=1),
    ] = None,
    shard: Annotated[
        str | None,
        typer.Option(help="K/N: only every N-th scan of the sorted list from the K-th (0-based)."),
    ] = None,
    on_error: Annotated[
        str, typer.Option("--on-error", help="skip (list in skipped.jsonl) or stop.")
    ] = "skip",
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print what would be read; write nothing.")
    ] = False,
    list_file: Annotated[
        Path | None,
        typer.Option("--list-file", help="With --dry-run: write the scans as a .csv listing."),
    ] = None,
    include: _Include = None,
    exclude: _Exclude = None,
    allow_non_ct: _AllowNonCT = False,
) -> None:
    """Convert scans into a chunked zarr store for pretraining (parallel, resumable).

    Bad scans are skipped and listed in STORE/skipped.jsonl; rerunning the same command
    resumes. Shards: run --shard 0/N ... --shard N-1/N into N stores and give them (or
    their parent folder) to pretrain --data.
    """
    _runtime_policy()
    from tapct_app.preprocess import preprocess_command

    preprocess_command(
        inputs,
        output,
        console=_console(),
        workers=workers,
        shard=shard,
        on_error=on_error,
        dry_run=dry_run,
        list_file=list_file,
        include=include or (),
        exclude=exclude or (),
        allow_non_ct=allow_non_ct,
    )


@app.command()
def fingerprint(
    inputs: Annotated[
        list[Path],
        typer.Argument(help="Scan files, folders (walked), zarr stores, .txt/.csv lists."),
    ],
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="JSON file (for --intensity-stats).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Processes reading scans (default: the available cores).")
    ] = None,
    on_error: Annotated[
        str, typer.Option(help="skip (report bad scans and go on) or stop (at the first).")
    ] = "skip",
    samples_per_scan: Annotated[
        int, typer.Option(help="Foreground voxels sampled per scan (nnU-Net: 10000).")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="Seed of the voxel sampling.")] = 0,
    include: _Include = None,
    exclude: _Exclude = None,
    allow_non_ct: _AllowNonCT = False,
) -> None:
    """Dataset fingerprint (nnU-Net style): body-foreground clip window, mean, std; spacings."""
    _runtime_policy()
    from tapct_app.preprocess import fingerprint_command

    fingerprint_command(
        inputs,
        output,
        console=_console(),
        workers=workers,
        on_error=on_error,
        samples_per_scan=samples_per_scan,
        seed=seed,
        include=include or (),
        exclude=exclude or (),
        allow_non_ct=allow_non_ct,
    )


@app.command()
def models() -> None:
    """List the model presets with parameter counts and token counts."""
    _runtime_policy()
    from tapct_app.model_table import models_command

    models_command(console=_console())


@app.command()
def configs() -> None:
    """List the shipped pretraining configs (use with --config NAME)."""
    from tapct_app.config_file import list_shipped_configs, shipped_config_path

    for name in list_shipped_configs():
        typer.echo(f"{name:12s} {shipped_config_path(name)}")


@app.command()
def retrieve(
    query_scan: Annotated[Path, typer.Argument(help="The initial scan.")],
    query_mask: Annotated[Path, typer.Argument(help="Lesion mask on the initial scan.")],
    target_scan: Annotated[Path, typer.Argument(help="The follow-up scan.")],
    model: Annotated[
        str,
        typer.Option(
            "--model", "-m",
            help="Model folder (save_pretrained), weights file, hub id owner/name (cache or "
            "download; HF_HUB_OFFLINE=1 honoured) or a preset.",
        ),
    ],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output directory.")],
    top_k: Annotated[int, typer.Option(help="Number of best-matching patches.")] = 10,
    label: Annotated[
        int | None, typer.Option(help="Use only this label value of the mask (default: > 0).")
    ] = None,
    roi: Annotated[str | None, typer.Option(help="Sliding-window size D,H,W.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    intensity_stats: Annotated[Path | None, typer.Option(help=_MODEL_INTENSITY_HELP)] = None,
    allow_non_ct: _AllowNonCT = False,
) -> None:
    """Patch retrieval (paper section 4.4): find a lesion of one scan in a follow-up scan."""
    _runtime_policy()
    from tapct_app.retrieve import retrieve_command

    retrieve_command(
        query_scan,
        query_mask,
        target_scan,
        model=model,
        output=output,
        top_k=top_k,
        label=label,
        roi=_parse_triplet(roi, "--roi"),
        device=device,
        console=_console(),
        intensity_stats=intensity_stats,
        allow_non_ct=allow_non_ct,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with the error policy (see module docstring).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status (0 success, 2 user error, 1 bug).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or bool(os.environ.get("TAPCT_DEBUG"))
    try:
        rc = app(args=args, prog_name="tapct", standalone_mode=False)
    except UserError as exc:
        if debug:
            raise
        command = next((a for a in args if not a.startswith("-")), None)
        print(f"tapct: error: {with_hint(one_line(exc), command)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:  # pretrain says where it stopped and how to resume
        print(f"tapct: {one_line(exc) if str(exc) else 'interrupted'}", file=sys.stderr)
        return 130
    except Exception as exc:
        # Typer's (vendored) click usage errors (a bad or missing option): the same one
        # line as every user error, with where to find the usage.
        message, exit_code = getattr(exc, "format_message", None), getattr(exc, "exit_code", None)
        if message is not None and isinstance(exit_code, int):
            ctx = getattr(exc, "ctx", None)
            where = ctx.command_path if ctx is not None else "tapct"
            print(f"tapct: error: {one_line(message())} (see {where} --help)", file=sys.stderr)
            return exit_code
        if type(exc).__name__ == "Abort":
            print("tapct: aborted", file=sys.stderr)
            return 1
        raise
    return rc if isinstance(rc, int) else 0
