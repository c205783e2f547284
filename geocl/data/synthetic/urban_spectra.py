"""The spectral model of the urban scene: material spectra, palettes per class, shadows, texture.

Spectra are reflectance x 10000 on the six base bands of
:data:`~geocl.data.synthetic.spectra.BASE_BANDS` (blue, green, red, nir, swir1, swir2);
a 4-band urban scene keeps blue, green, red and NIR, as the IRRGB orthophotos of the
ISPRS Potsdam benchmark.

The palettes are built so that the per-pixel spectrum does not tell the classes apart
(the point of the urban scene, see :mod:`geocl.data.synthetic.urban`):

* roofs are made of the same materials as streets and yards: tar and gravel roofs are
  asphalt and concrete, grey roof tiles are grey paving, red tiles are close to red
  paving; a few green roofs are low vegetation;
* trees and low vegetation draw their spectra from the same distribution; the crown
  shading of trees (darker on average) is compensated by :data:`TREE_GAIN`, so the two
  class means nearly coincide and only texture and shadows differ;
* cars take the colours of roofs, asphalt and markings; clutter mixes soil, sand,
  gravel, water, wood, rust and painted objects.
"""

from __future__ import annotations

import numpy as np

from geocl.data.synthetic.classes import N_URBAN_CLASSES
from geocl.data.synthetic.spectra import brightness


def _spectra(*rows: list[int]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


# Impervious surfaces: fresh asphalt, aged asphalt, concrete, grey paving, red paving.
IMPERVIOUS_MATERIALS = _spectra(
    [560, 610, 640, 730, 1100, 1000],
    [1000, 1050, 1100, 1250, 1600, 1450],
    [1500, 1580, 1620, 1760, 2100, 1900],
    [1180, 1250, 1300, 1430, 1850, 1700],
    [820, 930, 1350, 1700, 2200, 1900],
)
#: Probability of each impervious material on roads (asphalt) and on walkways/yards (paving).
ROAD_P = np.array([0.35, 0.65, 0.0, 0.0, 0.0])
PAVING_P = np.array([0.05, 0.15, 0.25, 0.35, 0.20])

# Roofs: tar (= aged asphalt), gravel (= concrete), grey tiles or fibre cement (= grey
# paving), red tiles, anthracite tiles, metal, green roof (sedum).
ROOF_MATERIALS = _spectra(
    [760, 800, 840, 960, 1300, 1200],
    [1250, 1310, 1350, 1470, 1850, 1700],
    [980, 1040, 1080, 1190, 1550, 1420],
    [700, 800, 1250, 1300, 1800, 1600],
    [460, 500, 530, 620, 760, 720],
    [1800, 1880, 1920, 2050, 2000, 1850],
    [470, 740, 610, 2400, 2000, 1150],
)
#: Roof material probabilities of flat roofs (blocks, halls, garages) and of pitched roofs (houses).
FLAT_ROOF_P = np.array([0.48, 0.22, 0.16, 0.0, 0.0, 0.10, 0.04])
PITCHED_ROOF_P = np.array([0.0, 0.0, 0.34, 0.33, 0.33, 0.0, 0.0])
#: Rooftop details: chimney brick, skylight glass, solar panels, HVAC metal.
ROOFTOP_MATERIALS = _spectra(
    [700, 750, 1100, 1400, 1900, 1700],
    [380, 420, 430, 460, 420, 380],
    [420, 400, 360, 420, 400, 380],
    [1900, 2000, 2050, 2200, 2150, 1950],
)

# Vegetation: lush and dry grass; trees draw from the same mixture.
GRASS = _spectra([430, 780, 560, 3400, 2100, 1050])[0]
DRY_GRASS = _spectra([680, 940, 1000, 2600, 2800, 1800])[0]
#: Brightness gain of tree spectra that compensates the mean crown self-shading, so
#: that tree and low-vegetation class means nearly coincide.
TREE_GAIN = np.float32(1.15)

# Car paints: white, silver, grey, black, blue, red, dark green, yellow.
CAR_PAINTS = _spectra(
    [2700, 2750, 2750, 2850, 2700, 2500],
    [1600, 1650, 1650, 1750, 1800, 1650],
    [900, 930, 950, 1050, 1250, 1150],
    [380, 390, 400, 450, 500, 470],
    [1150, 750, 480, 900, 800, 700],
    [520, 520, 1750, 2100, 1900, 1600],
    [420, 650, 470, 1100, 900, 700],
    [700, 1750, 2000, 2300, 2200, 2000],
)
CAR_P = np.array([0.22, 0.20, 0.15, 0.18, 0.08, 0.08, 0.04, 0.05])
#: Car glass (windscreen and rear window), relative to the paint.
GLASS = _spectra([330, 350, 360, 380, 360, 340])[0]

# Clutter: soil, gravel, sand, rust, wood, pond water, pool water, dark tarp, rubble.
CLUTTER_MATERIALS = _spectra(
    [950, 1180, 1480, 2000, 2800, 2350],
    [1250, 1350, 1500, 1800, 2400, 2100],
    [1800, 2000, 2250, 2550, 3000, 2700],
    [600, 700, 1000, 1300, 1700, 1500],
    [900, 1100, 1350, 1900, 2300, 2000],
    [500, 580, 420, 300, 150, 100],
    [1800, 2000, 1500, 800, 300, 200],
    [450, 480, 470, 520, 600, 560],
    [1300, 1350, 1400, 1600, 2000, 1850],
)
CLUTTER_P = np.array([0.22, 0.16, 0.10, 0.11, 0.12, 0.05, 0.04, 0.08, 0.12])
#: Ground of yards and building sites: soil, gravel, sand or rubble (indices into CLUTTER_MATERIALS).
YARD_P = np.array([0.40, 0.35, 0.10, 0.0, 0.0, 0.0, 0.0, 0.0, 0.15])
#: Share of clutter objects painted in a random colour (containers, toys, tarps).
PAINTED_CLUTTER_P = 0.18

#: Road markings and zebra crossings (white paint).
MARKING = _spectra([2900, 3000, 3050, 3200, 3100, 2900])[0]

#: Typical spectrum per class, for areas without an object of their own.
URBAN_SIGNATURES = np.stack(
    [IMPERVIOUS_MATERIALS[1], ROOF_MATERIALS[2], GRASS, GRASS * TREE_GAIN, CAR_PAINTS[2], CLUTTER_MATERIALS[0]]
).astype(np.float32)

#: Brightness in cast shadow relative to sunlight, per base band: diffuse skylight
#: only, bluer than the sun (Rayleigh), so blue keeps the most.
SHADOW_GAIN = np.array([0.42, 0.36, 0.31, 0.27, 0.25, 0.24], dtype=np.float32)

# Texture amplitudes per class (impervious, building, low vegetation, tree, car,
# clutter): fine (foliage clumps, grain) and mid-scale (wear, moisture, vigour); and the
# share of the mid-scale texture that acts as vigour.
FINE_AMP = np.array([0.05, 0.04, 0.05, 0.22, 0.03, 0.14], dtype=np.float32)
MID_AMP = np.array([0.06, 0.03, 0.10, 0.06, 0.0, 0.10], dtype=np.float32)
VIGOUR = np.array([0.0, 0.0, 1.0, 1.0, 0.0, 0.0], dtype=np.float32)
assert len(FINE_AMP) == len(MID_AMP) == len(VIGOUR) == len(URBAN_SIGNATURES) == N_URBAN_CLASSES


def pick(rng: np.random.Generator, materials: np.ndarray, p: np.ndarray, k: int, sd: float = 0.08) -> np.ndarray:
    """*k* spectra of shape (k, 6): a material drawn with probabilities *p*, times a brightness offset."""
    choice = rng.choice(len(materials), size=k, p=p)
    return materials[choice] * brightness(rng, k, sd, 0.03)


def vegetation(rng: np.random.Generator, k: int) -> np.ndarray:
    """*k* vegetation spectra of shape (k, 6), from lush to dry grass, for lawns and trees alike."""
    dry = (rng.uniform(0.0, 0.75, size=(k, 1)) ** 2).astype(np.float32)
    return (GRASS * (1 - dry) + DRY_GRASS * dry) * brightness(rng, k, 0.08, 0.03)


def clutter(rng: np.random.Generator, k: int) -> np.ndarray:
    """*k* heterogeneous clutter spectra of shape (k, 6): materials or a random paint."""
    spectra = pick(rng, CLUTTER_MATERIALS, CLUTTER_P, k, sd=0.12)
    painted = rng.uniform(size=k) < PAINTED_CLUTTER_P
    visible = rng.uniform(300, 3200, size=(k, 3)).astype(np.float32)
    paint = np.concatenate([visible, visible.mean(axis=1, keepdims=True) * rng.uniform(0.8, 1.4, size=(k, 3))], axis=1)
    return np.where(painted[:, None], paint.astype(np.float32), spectra).astype(np.float32)
