"""Map search on a trained model: text query -> where in a region it is (``graft map``).

An application beside evaluation: it imports ``graft.evaluation`` and
``graft.models``, never training. ``region`` cuts the region into tiles,
``index`` embeds and caches them, ``app`` serves the local page and writes
heat-map GeoTIFFs.
"""
