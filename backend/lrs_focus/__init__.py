"""lrs-focus: coarse-to-fine text-guided token pruning for very large remote-sensing rasters.

Heavy modules (torch, transformers, GDAL) are imported by the submodules that need them, so that
`import lrs_focus.protocol` stays cheap for clients.
"""

__version__ = "0.2.0"
