"""Text -> tile retrieval: type "river next to farmland", get the matching tiles of a scene on a map.

After Dental CLAIRES (Kabir et al., AMIA 2023 Informatics Summit, arXiv 2306.15651),
adapted to satellite tiles. The pieces, in the order a tile meets them:

* :mod:`~geocl.retrieval.captions`: template captions from class masks, each with its
  canonical attribute set (so relevance is exact), user captions from a CSV, class-name
  captions for natural images;
* :mod:`~geocl.retrieval.text`: the word tokenizer (clear messages for queries it cannot
  read) and the small text encoder trained from scratch;
* :mod:`~geocl.retrieval.model`: the two towers and their projection heads, read back
  from a checkpoint of the ``retrieval`` method (:mod:`geocl.methods.retrieval`, which
  trains them with :mod:`geocl.losses.multi_positive`);
* :mod:`~geocl.retrieval.index`: ``geocl index``, every tile embedded once with its
  footprint, path, caption and thumbnail;
* :mod:`~geocl.retrieval.search`: ``geocl search``, the top k as text, GeoPackage and contact sheet;
* :mod:`~geocl.retrieval.server`: ``geocl serve``, the local search page;
* :mod:`~geocl.retrieval.metrics`: hit@k, MRR and Recall@k, used by the ``retrieval``
  evaluation of ``geocl compare`` (:mod:`geocl.evaluation.retrieval`).

Importing this package imports nothing heavy; the modules import torch, geopandas or
FastAPI themselves.
"""
