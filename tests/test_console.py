"""Quiet output: no Lightning banners or third-party warnings unless verbose."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import warnings

from geocl.console import QUIET_LOGGERS, configure_output

#: A tiny Lightning fit, a validation restored from its checkpoint, and two warnings
#: (one attributed to a third-party module, one to geocl), run quiet then verbose.
SCRIPT = textwrap.dedent(
    """
    import sys
    import warnings

    from geocl.console import configure_output

    def run(verbose):
        configure_output(verbose=verbose)
        import lightning
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        class Tiny(lightning.LightningModule):
            def __init__(self):
                super().__init__()
                self.layer = torch.nn.Linear(2, 1)

            def training_step(self, batch, index):
                return self.layer(batch[0]).sum()

            def validation_step(self, batch, index):
                self.log("v", self.layer(batch[0]).sum())

            def configure_optimizers(self):
                return torch.optim.SGD(self.parameters(), lr=0.1)

        loader = DataLoader(TensorDataset(torch.randn(4, 2)), batch_size=2)
        trainer = lightning.Trainer(
            max_epochs=1, default_root_dir=sys.argv[1], logger=False, enable_progress_bar=False,
            enable_model_summary=False, accelerator="cpu",
        )
        trainer.fit(Tiny(), loader, loader)
        trainer.validate(Tiny(), loader, ckpt_path=trainer.checkpoint_callback.best_model_path, verbose=False)
        warnings.warn_explicit("an old torchgeo API", DeprecationWarning, "torchgeo/x.py", 1, module="torchgeo.x")
        warnings.warn_explicit("a torchvision note", UserWarning, "torchvision/y.py", 1, module="torchvision.y")
        warnings.warn_explicit("geocl's own warning", UserWarning, "geocl/z.py", 1, module="geocl.z")

    run(verbose=False)
    print("=== verbose ===", file=sys.stderr, flush=True)
    run(verbose=True)
    """
)

BANNERS = ("GPU available", "TPU available", "💡 Tip", "Restoring states", "`Trainer.fit` stopped")


def test_lightning_banners_and_library_warnings_only_when_verbose(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-W", "default", "-c", SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    quiet, verbose = (result.stdout + result.stderr).split("=== verbose ===")
    for banner in BANNERS:
        assert banner not in quiet, quiet
        assert banner in verbose, verbose
    assert "an old torchgeo API" not in quiet and "a torchvision note" not in quiet
    assert "an old torchgeo API" in verbose and "a torchvision note" in verbose
    assert "geocl's own warning" in quiet  # geocl's own warnings are always shown


def _ours(entry: tuple[object, ...]) -> bool:
    module = entry[3]
    return "lightning_fabric" in str(getattr(module, "pattern", module or ""))


def test_configure_output_switches_both_ways() -> None:
    # the banners' loggers (rank_zero: GPU/TPU available, tips, restoring states; cuda:
    # LOCAL_RANK) take their level from the sub-package loggers set here
    assert {"lightning.pytorch.utilities", "lightning.pytorch.accelerators", "lightning.fabric.utilities"} <= set(
        QUIET_LOGGERS
    )
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    package = logging.getLogger("lightning.pytorch.utilities")
    with warnings.catch_warnings():
        try:
            configure_output(verbose=False)
            configure_output(verbose=False)  # twice: still one set of filters
            assert logger.getEffectiveLevel() == logging.WARNING
            ours = [f for f in warnings.filters if f[0] == "ignore" and _ours(f)]
            assert len(ours) == 4  # deprecation, pending deprecation, future, user
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                configure_output(verbose=False)  # ours go in front again and decide first
                warnings.warn_explicit("x", DeprecationWarning, "k.py", 1, module="kornia.augmentation")
                warnings.warn_explicit("y", DeprecationWarning, "g.py", 1, module="geocl.data")
            assert [str(w.message) for w in caught] == ["y"]
            configure_output(verbose=True)
            assert package.level == logging.NOTSET
            assert not [f for f in warnings.filters if _ours(f)]
        finally:
            configure_output(verbose=True)
