"""``geocl make-volumes``: seeded synthetic MRI-like volumes with label maps, written as NIfTI.

The embedded medical data set, so that the NIfTI adapter, the Dice evaluation, FBA and
the medical demo run with no download. Each case is drawn from its own generator
(``numpy.random.default_rng([seed, case])``), so a case does not change when the case
count does. What a case holds, in physical (mm) coordinates:

- a smooth "organ" (label 1): an ellipsoid of random size (semi-axes 15-30 % of the
  smallest field-of-view side), elongation, rotation and position, its radius deformed
  by a smooth random field (Gaussian-filtered noise, ~6 mm correlation) and, in half the
  cases, a second smaller lobe fused on; the largest connected component, holes filled;
- a textured background and 1-3 distractor blobs about as bright as the organ,
  so a threshold alone does not segment it;
- partial-volume blur, a smooth multiplicative bias field (intensity inhomogeneity,
  about +/-30 %) and Rician noise (the magnitude of complex Gaussian noise, as in MRI);
- anisotropic spacing: in-plane 0.6-1.0 mm, slices 1.0-1.6 mm apart (third axis).

Written as ``images/<case>.nii.gz`` (int16) and ``labels/<case>.nii.gz`` (uint8) with a
RAS affine (spacing on the diagonal, the field of view centred on the origin) — the
layout :func:`geocl.data.medical.files.find_cases` reads — plus ``volumes.json`` (the
parameters: a rerun with the same ones reuses the files) and ``preview.png`` (a slice
of each of the first cases with the organ contour).

Every file is written atomically; ``volumes.json`` says ``"complete": false`` while the
files are being written and holds the bare parameters once all are there, so an
interrupted run (a full disk) is never taken for a complete set and its rerun goes on
without ``--overwrite``. A folder that holds volumes but no ``volumes.json`` (another
data set) is refused unless ``overwrite``; with it, volumes of the folder's
``images/`` and ``labels/`` that are not part of the new set are removed, so that no
case of an earlier set is read with the new ones. A real data set (e.g. left-atrium
MRI) in the same layout is used by pointing the same commands at its folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial.transform import Rotation

from geocl.errors import InvalidInputError, OutputExistsError
from geocl.io import atomic_write_text, check_output_folder, save_figure

#: The folders make_volumes writes (those of the first layout of geocl.data.medical.files).
FOLDERS = ("images", "labels")

__all__ = ["VolumeSetFiles", "make_volumes", "synthetic_case"]

#: The parameters file ``make_volumes`` leaves beside the volumes.
MANIFEST = "volumes.json"
#: Intensity scale of the stored int16 images (organ ~ 800, background ~ 350).
INTENSITY_SCALE = 1000.0


@dataclass(frozen=True)
class VolumeSetFiles:
    """What :func:`make_volumes` wrote (or found).

    Attributes:
        root: the data folder.
        images: the image files, in case order.
        labels: the label maps, in case order.
        preview: the PNG of a slice per case.
        reused: the files were there already (same parameters): nothing was written.
    """

    root: Path
    images: list[Path]
    labels: list[Path]
    preview: Path
    reused: bool


@dataclass(frozen=True)
class _Parameters:
    cases: int
    min_size: int
    max_size: int
    seed: int
    version: int = 1


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], spacing: np.ndarray, sigma_mm: float) -> np.ndarray:
    """Gaussian-filtered white noise with a correlation length of ``sigma_mm``, scaled to unit std."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma=sigma_mm / spacing, mode="wrap")
    return field / max(float(field.std()), 1e-12)


def _ellipsoid_radius(points: np.ndarray, centre: np.ndarray, axes: np.ndarray, rotation: Rotation) -> np.ndarray:
    """Normalised ellipsoid radius of points ``[..., 3]`` (mm): < 1 inside."""
    local = rotation.inv().apply((points - centre).reshape(-1, 3)) / axes
    return np.linalg.norm(local, axis=1).reshape(points.shape[:-1])


def synthetic_case(
    seed: int, case: int, min_size: int = 64, max_size: int = 96
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic case.

    Args:
        seed: seed of the data set.
        case: case number (its own generator: ``default_rng([seed, case])``).
        min_size: smallest side in voxels.
        max_size: largest side in voxels.

    Returns:
        ``(image, label, spacing)``: image int16 ``[X, Y, Z]``, label uint8 ``[X, Y, Z]``
        in {0, 1}, spacing float64 ``[3]`` in mm (the third axis the coarse one).
    """
    rng = np.random.default_rng([seed, case])
    shape = tuple(int(side) for side in rng.integers(min_size, max_size + 1, size=3))
    in_plane = rng.uniform(0.6, 1.0)
    spacing = np.array([in_plane, in_plane, rng.uniform(1.0, 1.6)])
    extent = np.asarray(shape) * spacing
    axes_mm = [(np.arange(n) + 0.5) * s - e / 2 for n, s, e in zip(shape, spacing, extent, strict=True)]
    points = np.stack(np.meshgrid(*axes_mm, indexing="ij"), axis=-1)  # [X, Y, Z, 3] mm

    # the organ: a deformed ellipsoid, sometimes with a second lobe
    radius = rng.uniform(0.15, 0.3) * extent.min()
    axes = radius * rng.uniform(0.7, 1.3, size=3)
    centre = rng.uniform(-0.15, 0.15, size=3) * extent
    rotation = Rotation.random(random_state=rng)
    deformation = 1.0 + 0.18 * _smooth_field(rng, shape, spacing, sigma_mm=6.0)
    organ = _ellipsoid_radius(points, centre, axes, rotation) < deformation
    if rng.random() < 0.5:
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        lobe_centre = centre + rotation.apply(axes * direction * 0.85)
        organ |= _ellipsoid_radius(points, lobe_centre, axes * rng.uniform(0.35, 0.55), rotation) < deformation
    components, count = ndimage.label(organ)
    if count > 1:
        sizes = ndimage.sum_labels(organ, components, index=np.arange(1, count + 1))
        organ = components == 1 + int(np.argmax(sizes))
    organ = ndimage.binary_fill_holes(organ)

    # intensities: textured background, distractors, the organ; blur, bias field, Rician noise
    clean = 0.35 + 0.06 * _smooth_field(rng, shape, spacing, sigma_mm=4.0)
    for _ in range(int(rng.integers(1, 4))):
        where = rng.uniform(-0.4, 0.4, size=3) * extent
        blob = _ellipsoid_radius(
            points, where, radius * rng.uniform(0.2, 0.45, size=3), Rotation.random(random_state=rng)
        )
        clean[(blob < 1) & ~organ] = rng.uniform(0.6, 0.8)
    clean[organ] = 0.8 + 0.04 * _smooth_field(rng, shape, spacing, sigma_mm=3.0)[organ]
    clean = ndimage.gaussian_filter(clean, sigma=0.5 * spacing.min() / spacing)  # partial volume, ~0.5 mm
    unit = points / (extent / 2)  # [-1, 1] per axis
    coefficients = rng.uniform(-0.15, 0.15, size=(3, 2))
    log_bias = sum(c1 * unit[..., k] + c2 * (unit[..., k] ** 2 - 1 / 3) for k, (c1, c2) in enumerate(coefficients))
    biased = clean * np.exp(log_bias)
    sigma = 0.08
    noisy = np.hypot(biased + sigma * rng.standard_normal(shape), sigma * rng.standard_normal(shape))
    image = np.clip(noisy * INTENSITY_SCALE, 0, np.iinfo(np.int16).max).astype(np.int16)
    return image, organ.astype(np.uint8), spacing


def _affine(shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    """RAS affine with ``spacing`` on the diagonal and the field of view centred on the origin."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(np.asarray(shape) - 1) * spacing / 2
    return affine


def _volumes_in(root: Path) -> list[Path]:
    """The NIfTI files of ``root``'s ``images/`` and ``labels/``."""
    return sorted(
        path
        for folder in FOLDERS
        if (root / folder).is_dir()
        for path in (root / folder).iterdir()
        if path.name.lower().endswith((".nii", ".nii.gz"))
    )


def _reusable(root: Path, parameters: _Parameters, names: list[str], overwrite: bool) -> bool:
    """Whether ``root`` holds this very data set already; refuse to mix it with another one."""
    manifest = root / MANIFEST
    if overwrite:
        return False
    if not manifest.exists():
        found = _volumes_in(root)
        if found:
            raise OutputExistsError(
                f"holds NIfTI volumes ({found[0].relative_to(root)}, ...) but no {MANIFEST}: another data set; "
                "choose another folder, or pass --overwrite to replace them",
                path=root,
            )
        return False
    try:
        before = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        before = None
    if before == {**asdict(parameters), "complete": False}:
        return False  # an interrupted run of these parameters: write the set again
    if before != asdict(parameters):
        raise OutputExistsError(
            "holds synthetic volumes made with other parameters; pass --overwrite to replace them, "
            "or choose another folder",
            path=root,
        )
    return (
        all((root / folder / name).exists() for folder in FOLDERS for name in names) and (root / "preview.png").exists()
    )


def make_volumes(
    root: str | os.PathLike[str],
    *,
    cases: int = 20,
    min_size: int = 64,
    max_size: int = 96,
    seed: int = 0,
    overwrite: bool = False,
) -> VolumeSetFiles:
    """Write the embedded synthetic volumes (NIfTI images and label maps) to ``root``.

    Args:
        root: output folder (``images/``, ``labels/``, ``volumes.json``, ``preview.png``).
        cases: number of cases.
        min_size: smallest side of a volume in voxels (at least 16).
        max_size: largest side in voxels.
        seed: seed of the data set.
        overwrite: rewrite the files even when the folder holds this data set, or
            another one.

    Returns:
        The files (:class:`VolumeSetFiles`).

    Raises:
        GeoclError: bad sizes or count; ``root`` holds volumes made with other
            parameters, or volumes without ``volumes.json`` (without ``overwrite``);
            ``root`` cannot be written; a write fails (a full disk: naming the file;
            ``volumes.json`` then says the set is incomplete).
    """
    if cases < 1:
        raise InvalidInputError(f"must be at least 1, got {cases}", key="cases")
    if not 16 <= min_size <= max_size:
        raise InvalidInputError(f"sizes must satisfy 16 <= min <= max, got {min_size} and {max_size}", key="size")
    from geocl.data.medical.files import write_nifti  # nibabel: imported when volumes are written

    root = check_output_folder(root, key="dir")
    parameters = _Parameters(cases, min_size, max_size, seed)
    names = [f"case_{index:03d}.nii.gz" for index in range(cases)]
    images = [root / "images" / name for name in names]
    labels = [root / "labels" / name for name in names]
    if _reusable(root, parameters, names, overwrite):
        return VolumeSetFiles(root, images, labels, root / "preview.png", reused=True)
    # first: the set is incomplete until the bare parameters replace this at the end
    atomic_write_text(root / MANIFEST, json.dumps({**asdict(parameters), "complete": False}, indent=1))
    keep = {*images, *labels}
    for path in _volumes_in(root):  # only with overwrite (or none): volumes of another set
        if path not in keep:
            path.unlink()
    previews = []
    for index in range(cases):
        image, label, spacing = synthetic_case(seed, index, min_size, max_size)
        affine = _affine(image.shape, spacing)
        write_nifti(images[index], image, affine)
        write_nifti(labels[index], label, affine)
        if index < 4:
            previews.append((names[index], image, label, spacing))
    preview = save_figure(_preview(previews), root / "preview.png")
    atomic_write_text(root / MANIFEST, json.dumps(asdict(parameters), indent=1))
    return VolumeSetFiles(root, images, labels, preview, reused=False)


def _preview(cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]) -> object:
    """A figure: the slice (third axis) with the most organ of each case, organ contoured."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(cases), 3.4))
    for column, (name, image, label, spacing) in enumerate(cases):
        axes = figure.add_subplot(1, len(cases), column + 1)
        index = int(np.argmax(label.sum(axis=(0, 1))))
        axes.imshow(image[:, :, index].T, cmap="gray", origin="lower", aspect=spacing[1] / spacing[0])
        if label[:, :, index].any():
            axes.contour(label[:, :, index].T, levels=[0.5], colors="lime", linewidths=1.0)
        axes.set_title(f"{name.removesuffix('.nii.gz')}, slice {index}", fontsize=9)
        axes.set_axis_off()
    figure.suptitle("synthetic volumes: organ (label 1) in green")
    figure.tight_layout()
    return figure
