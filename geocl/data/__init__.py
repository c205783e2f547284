"""Raster data: scene datasets on TorchGeo, tiling, tile index and the fast tile dataset."""
