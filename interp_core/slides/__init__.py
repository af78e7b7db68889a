"""Whole-slide images: the reader protocol and in-memory slides (``reader``), OpenSlide files and
pyramid TIFFs (``wsi``), tissue detection, tiling and stitched attribution maps (``explain``), the
resumable background job and its exports (``job``), and Deep Zoom tiles for the viewer
(``deepzoom``)."""
