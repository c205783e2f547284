"""GraSS: contrastive learning with gradient-guided sampling (Zhang et al., TGRS 2023).

Paper: doi 10.1109/TGRS.2023.3336285, arXiv 2306.15868; released code: GeoX-Lab/GraSS
(``vissl/trainer/train_steps/GraSS_train_step.py``), whose stage-2 step this follows.

Stage 1 (``epoch < warmup_epochs``) is plain SimCLR, the paper's instance-discrimination
warm-up. Stage 2 makes every step two passes over the same augmented views:

1. *guide pass*: the NT-Xent loss of the views is back-propagated to the feature map
   A of the gradient layer only (``torch.autograd.grad`` w.r.t. A; with the default
   layer, the encoder runs without a graph), a Grad-CAM-style map per view is built
   from A and dL/dA, thresholded at ``threshold_ratio`` of its range, and the box of
   the connected component holding the peak is cut out of the view and resized back;
2. *training pass*: NT-Xent on the cropped views (positives: the two crops of one
   image), which alone updates the weights.

Where paper and code leave a choice open, geocl reads them so (A1-A8 are geocl's labels
of these readings, used across its GraSS code, e.g. :mod:`geocl.sampling.regions`): A1
the warm-up is a recipe parameter (``warmup_epochs``): the paper describes it, the
released code has none, so its length is a choice; A2 the map keeps the loss gradient's
sign and is divided by its maximum only when that is positive; A3 tiles are 256 px by
default (``geocl tile``; the released code does not give the size of GraSS's pretraining
patches); A4 the finetuning protocol, not released, is :mod:`geocl.finetune.train`'s; A5
the head is Linear-ReLU-Linear, SimCLR's (the released VISSL setup drops the ReLU its
config asks for); A6 no minimum box side by default, as released (``min_box_side``
enables one); A7 the map comes from the spatial feature map before pooling; A8 the crop
is taken from the already augmented view.

The map's grid sets the smallest box: the paper's ResNet-50 ``layer4`` gives 7 x 7
cells on its 224 px views, a ResNet ``layer4`` 3 x 3 on 96 px views and ``layer3``
6 x 6. Every stage-2 epoch logs the mean box area as a fraction of the view
(``train/box_area`` in ``metrics.csv`` and on the training bar; a view left whole
counts 1), drawn at the end to ``plots/box_area.png``. The released rule keeps what
lies above the middle of the map's range: on a map whose values spread evenly about
that middle, as an encoder early in training gives, that is about half the view.
Whether a box holds one object is another question: on tiles with masks a run ends by
scoring its boxes' purity against random boxes of the same size
(:mod:`geocl.methods.grass_boxes`), and ``box_placement: random`` (an ablation, not in
the paper) trains with each box moved to a random place, its size kept, to measure what
the map's location adds to the zoom of the crop.

With ``stage2_sampling: geo`` the online crop is replaced by regions drawn, at scene
scale, by :class:`~geocl.sampling.GradientRegionSampler` from gradient maps of whole
tiles written as georeferenced rasters at the start of every stage-2 epoch; the
training step then contrasts two views of each drawn region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from geocl.data.tile_dataset import TileDataset
from geocl.errors import GeoclError
from geocl.losses import NTXentLoss
from geocl.methods.registry import register_method
from geocl.methods.simclr import SimCLR
from geocl.sampling.regions import Box, crop_and_resize, gradient_maps, move_boxes, select_boxes, upsample_maps
from geocl.transforms import photometric_only


@register_method("grass")
class GraSS(SimCLR):
    """GraSS on multi-band tiles (defaults: the released code's values where it has them).

    Args:
        encoder, in_chans, temperature, hidden_dim, output_dim, head_batch_norm, **common:
            see :class:`~geocl.methods.simclr.SimCLR`.
        warmup_epochs: epochs of stage 1 (instance discrimination) before stage 2 (the
            paper's warm-up; the released code has no stage switch and guides from step 0).
        threshold_ratio: map threshold as a fraction of its range (released code: 0.5).
        layer: module of the timm encoder whose output gives the map, e.g. ``layer3``;
            empty = the last feature map (released code: ResNet ``layer4``).
        min_box_side: smallest box side in px (an ablation; 0 = as released, no minimum).
        box_placement: ``gradient`` (as released: the box of the map's peak) or
            ``random``, an ablation not in the paper: each box keeps its size but goes to
            a random place in its view, so a run measures what the map's location adds
            to the zoom that cropping applies (online stage-2 sampling only).
        stage2_sampling: ``online`` (crop each view, as released) or ``geo`` (regions
            drawn by the gradient-region GeoSampler from maps of whole tiles).
        region_size: side of geo-sampled regions in px (0 = the tile size / 2).
        regions_per_epoch: geo-sampled regions per epoch (0 = as many as train tiles).
        map_tiles: tiles whose region maps are written as GeoTIFF and PNG at the end.
    """

    def __init__(
        self,
        encoder: str = "resnet18",
        in_chans: int = 3,
        *,
        warmup_epochs: Annotated[int, Field(ge=0)] = 1,
        threshold_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5,
        layer: str = "",
        min_box_side: Annotated[int, Field(ge=0)] = 0,
        box_placement: Literal["gradient", "random"] = "gradient",
        stage2_sampling: Literal["online", "geo"] = "online",
        region_size: Annotated[int, Field(ge=0)] = 0,
        regions_per_epoch: Annotated[int, Field(ge=0)] = 0,
        map_tiles: Annotated[int, Field(ge=0)] = 4,
        **simclr: Any,
    ) -> None:
        super().__init__(encoder, in_chans, **simclr)
        params = self.params
        if params.spps.enabled:
            # neither paper defines the mix, and geo stage 2 draws regions, not the tiles pairs index
            raise GeoclError(
                "GraSS does not combine with semantic positive pairs; set it to false "
                "or use method simclr or moco with spps",
                key="method.spps.enabled",
            )
        if params.box_placement == "random" and params.stage2_sampling == "geo":
            raise GeoclError(
                "box_placement 'random' moves the boxes cropped from views; geo stage-2 sampling "
                "crops none: use stage2_sampling 'online'",
                key="method.box_placement",
            )
        if params.layer:
            self._find_layer(params.layer)  # a wrong name fails at build time, naming its key
        # maps of whole tiles are written by one process: no cross-device gather there
        self.local_criterion = NTXentLoss(temperature=params.temperature, gather_distributed=False)

    # ------------------------------------------------------------------ hooks

    def check_train_data(self, dataset: Dataset[dict[str, Any]]) -> None:
        if self.params.stage2_sampling == "geo" and not isinstance(dataset, TileDataset):
            raise GeoclError(
                "stage2_sampling 'geo' draws regions from georeferenced tiles; these images have none: "
                "use stage2_sampling 'online'",
                key="method.stage2_sampling",
            )

    def train_loader(self, data: Any) -> DataLoader[Any] | None:
        if self.params.stage2_sampling == "geo" and self.in_stage2:
            from geocl.methods.grass_maps import region_loader

            return region_loader(self, data)
        return None

    @property
    def reloads_data_every_epoch(self) -> bool:
        return self.params.stage2_sampling == "geo"

    def run_findings(self, out: Path) -> list[str]:
        from geocl.methods.grass_boxes import describe_box_statistics
        from geocl.methods.grass_maps import BOX_STATISTICS

        line = describe_box_statistics(out / BOX_STATISTICS, self.params.threshold_ratio)
        return [] if line is None else [line]

    def configure_callbacks(self) -> list[Any]:
        dataset = getattr(self.datamodule, "dataset", None)
        if not isinstance(dataset, TileDataset):
            return []  # region maps are georeferenced rasters on the tiles' grids
        from geocl.methods.grass_maps import RegionMapWriter

        return [RegionMapWriter(dataset, self.datamodule.out, count=self.params.map_tiles)]

    @property
    def gradient_layer(self) -> torch.nn.Module | None:
        """The encoder module whose output gives the map; None = the last feature map.

        Looked up by name on every call rather than kept as an attribute: a module kept
        as an attribute would be registered a second time, its weights saved twice in
        every checkpoint under another prefix, and a checkpoint of another method (or
        of another ``layer``) could no longer be loaded.
        """
        return self._find_layer(self.params.layer) if self.params.layer else None

    def _find_layer(self, name: str) -> torch.nn.Module:
        modules = dict(self.encoder.body.named_modules())
        if name not in modules:
            top = [n for n in modules if n and "." not in n]
            raise GeoclError(f"encoder has no layer {name!r}; top-level layers: {', '.join(top)}", key="method.layer")
        return modules[name]

    @property
    def in_stage2(self) -> bool:
        """Whether the current epoch uses gradient-guided sampling."""
        return self.current_epoch >= self.params.warmup_epochs

    def guide(self, views: Tensor, criterion: torch.nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """Guide pass: feature map A of the gradient layer and dL/dA.

        Args:
            views: ``[2N, C, S, S]``, the N first and N last rows being the two views.
            criterion: the contrastive loss (default: the training loss, negatives
                gathered across devices).

        Returns:
            A and dL/dA, both ``[2N, D, h, w]`` and without graph. Only dL/dA is computed:
            no parameter gradient, and with the default layer no encoder graph at all.
        """
        n = views.shape[0] // 2
        layer = self.gradient_layer
        with torch.enable_grad():
            if layer is None:
                with torch.no_grad():
                    features = self.encoder.feature_map(views)
                features.requires_grad_(True)
                embeddings = self.head(self.encoder.pool(features))
            else:
                captured: list[Tensor] = []

                def capture(_module: torch.nn.Module, _inputs: Any, output: Tensor) -> Tensor:
                    # cut the graph here: layers below the map need no gradient
                    detached = output.detach().requires_grad_(True)
                    captured.append(detached)
                    return detached

                handle = layer.register_forward_hook(capture)
                try:
                    embeddings = self.embed(views)
                finally:
                    handle.remove()
                features = captured[0]
            loss = (criterion or self.criterion)(embeddings[:n], embeddings[n:])
            (gradients,) = torch.autograd.grad(loss, features)
        return features.detach(), gradients

    def tile_region_maps(self, images: Tensor) -> Tensor:
        """Region maps of whole tiles, for writing as rasters or geo sampling.

        Two photometric-only views per tile (so map pixels stay on the tile's grid)
        go through the guide pass in eval mode (BatchNorm statistics untouched); the
        two maps of a tile are averaged and upsampled to the tile size.

        Args:
            images: normalised tiles ``[N, C, H, W]`` (N >= 2: negatives are the other tiles).

        Returns:
            ``[N, H, W]`` maps.
        """
        was_training = self.training
        self.eval()
        try:
            photometric = photometric_only(self.augmentation)
            views = torch.cat([photometric(images), photometric(images)])
            features, gradients = self.guide(views, self.local_criterion)
            maps = upsample_maps(gradient_maps(features, gradients), (images.shape[-2], images.shape[-1]))
        finally:
            self.train(was_training)
        n = len(images)
        return (maps[:n] + maps[n:]) / 2

    def sample_regions(self, views: Tensor) -> tuple[Tensor, list[Any]]:
        """Guide pass, map -> box per view, crop and resize back.

        Args:
            views: ``[2N, C, S, S]``.

        Returns:
            The cropped views (same shape) and the boxes (None where the map was constant).
        """
        features, gradients = self.guide(views)
        maps = gradient_maps(features, gradients)
        params = self.params
        view_size = (views.shape[-2], views.shape[-1])
        boxes = select_boxes(maps, view_size, params.threshold_ratio, params.min_box_side)
        if params.box_placement == "random":
            boxes = move_boxes(boxes, view_size)  # torch's generator, seeded from the step
        return crop_and_resize(views, boxes), boxes

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        if not self.in_stage2 or self.params.stage2_sampling == "geo":
            # stage 1, or stage 2 whose regions the geo sampler already drew
            return super().training_step(batch, batch_idx)
        view_a, view_b = self.views(batch["image"])
        n = len(view_a)
        cropped, boxes = self.sample_regions(torch.cat([view_a, view_b]))
        loss = self.check_finite(self.contrast(cropped[:n], cropped[n:]))
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True, batch_size=n)
        # goal of the crop: one object, a fraction of the view; 1.0 = the view kept whole
        area = box_area(boxes, (view_a.shape[-2], view_a.shape[-1]))
        self.log("train/box_area", area, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True, batch_size=n)
        return loss


def box_area(boxes: list[Box | None], view_size: tuple[int, int]) -> float:
    """Mean area of the crop boxes as a fraction of the view (a view left whole counts 1).

    Args:
        boxes: ``(r0, r1, c0, c1)`` per view, or None where the view was kept whole.
        view_size: ``(H, W)`` of the views (px).
    """
    size = view_size[0] * view_size[1]
    areas = [(b[1] - b[0]) * (b[3] - b[2]) / size if b is not None else 1.0 for b in boxes]
    return sum(areas) / len(areas)
