"""``tapct_data`` readers in the shape ``tapct_eval`` injects (image and label loaders)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tapct_app.errors import user_errors_from

if TYPE_CHECKING:
    from tapct_data import NormalizeConfig

__all__ = ["ScanLoaders"]


class ScanLoaders:
    """``load_image(path)`` and ``load_label(path, image_path)`` backed by ``tapct_data``.

    Images are read with ``tapct_data.read_volume`` (canonical LPS, axial first, HU) and
    normalised with ``ClipNormalize(normalize)`` (the model's statistics,
    :func:`tapct_app.intensity.model_normalize`; default the paper's). Labels are read
    with ``tapct_data.read_label`` resampled (nearest)
    onto the image's grid, so a label stored in another orientation (e.g. LAS for a DICOM
    series) lines up. Before that, ``tapct_eval.check_label_image`` refuses a label that
    is an image (a CT given as the label) or does not lie on its image (another scan's
    label), and warns when it covers only part of it: the one check of every command that
    pairs a label with an image (``benchmark``, ``retrieve``). Read errors become one-line
    :class:`~tapct_app.errors.UserError`.
    The last image volume is cached so that a label read right after its image does not
    read the image twice. ``allow_non_ct`` (``--allow-non-ct``) reads non-HU images
    anyway (``tapct_data.read_volume``'s switch).
    """

    def __init__(
        self, normalize: NormalizeConfig | None = None, allow_non_ct: bool = False
    ) -> None:
        from tapct_data import ClipNormalize

        self.normalize = ClipNormalize(normalize)
        self.allow_non_ct = allow_non_ct
        self._last: tuple[str, Any] | None = None

    def volume(self, path: str | Path) -> Any:
        """Return the ``tapct_data.Volume`` of an image (cached for the last path)."""
        from tapct_data import read_volume

        key = str(Path(path).resolve())
        if self._last is None or self._last[0] != key:
            with user_errors_from(path):
                self._last = (key, read_volume(path, allow_non_ct=self.allow_non_ct))
        return self._last[1]

    def spacing(self, path: str | Path) -> tuple[float, float, float]:
        """Return the voxel size ``(sd, sh, sw)`` in mm of an image as read."""
        sd, sh, sw = (float(v) for v in self.volume(path).spacing)
        return (sd, sh, sw)

    def load_image(self, path: str | Path) -> Any:
        """Return the normalised ``(1, D, H, W)`` float32 image.

        Args:
            path: Image file or DICOM folder.

        Returns:
            The tensor.
        """
        return self.normalize(self.volume(path).data).float()

    def load_label(self, path: str | Path, image_path: str | Path) -> Any:
        """Return the ``(D, H, W)`` int64 label map on the image's grid.

        Args:
            path: Label file.
            image_path: Its image.

        Returns:
            The tensor.

        Raises:
            UserError: An unreadable label, an image given as the label, or a label that
                does not lie on its image (``tapct_eval.check_label_image``).
        """
        from tapct_data import read_label, resample_label
        from tapct_eval import check_label_image

        reference = self.volume(image_path)
        with user_errors_from(path):
            native = read_label(path)
            check_label_image(
                native.data[0],
                native.affine,
                reference.shape,
                reference.affine,
                label_path=path,
                image_path=image_path,
                # A SEG's grid spans only its frames with a segment: short cover expected.
                sparse_frames=native.metadata.get("format") == "dicom-seg",
            )
            label = resample_label(native, reference)
        return label.data[0].long()
