"""Painters of the urban scene: the street grid, and the city blocks with what stands in them.

The painters add objects to a :class:`~geocl.data.synthetic.urban_plan.Plan`, in frame
metres (see :mod:`~geocl.data.synthetic.urban_plan`).

The layout follows the two ISPRS 2D labelling cities:

* **streets** (:func:`lay_out_streets`, :mod:`.streets`): a grid of carriageways (5-14 m)
  with sidewalks, some with grass verges and street trees, cars parked along the kerbs and
  driving, a dashed centre line and zebra crossings;
* **blocks** between the streets (:func:`lay_out_blocks`, :mod:`.blocks`), each of one type
  (:data:`BLOCK_TYPES`): built-up blocks (:mod:`.built`): Potsdam-like perimeter blocks of
  12-21 m high buildings around a courtyard with lawn, trees, garages and parking;
  Vaihingen-like detached houses with pitched roofs in gardens; commercial halls with
  parking lots; and open blocks (:mod:`.grounds`): parks with groves, paths, ponds and
  playgrounds; yards with containers, material piles, trucks and sheds. What every block
  painter uses (the block, its taken boxes, trees, clutter, parking rows) is in :mod:`.lots`.

Each block planner draws from the scene's one generator, so the order of the calls is
part of the scene.
"""

from geocl.data.synthetic.urban_painters.blocks import BLOCK_P, BLOCK_TYPES, lay_out_blocks
from geocl.data.synthetic.urban_painters.lots import Block
from geocl.data.synthetic.urban_painters.streets import Street, lay_out_streets

__all__ = ["BLOCK_P", "BLOCK_TYPES", "Block", "Street", "lay_out_blocks", "lay_out_streets"]
