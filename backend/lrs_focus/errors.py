"""Errors with stable codes.

The service turns any `LrsFocusError` into an `error` reply carrying `code` and the message, so
codes here are part of the protocol: add new ones, never rename.
"""


class LrsFocusError(Exception):
    """Base class: `code` is stable and machine-readable, the message is for people."""

    code = "internal"


# -- raster input -------------------------------------------------------------------------------
class RasterError(LrsFocusError):
    code = "raster_error"


class RasterNotFound(RasterError):
    code = "raster_not_found"


class NotARaster(RasterError):
    """A path that exists but GDAL cannot open as a raster (a directory, a text file...)."""

    code = "not_a_raster"


class RasterForbidden(RasterError):
    """A path the server's access policy refuses (network, not a regular file, outside the allowed roots...)."""

    code = "raster_forbidden"


class RasterUnreadable(RasterError):
    """GDAL opened it but reading pixels fails (truncated TIFF, broken compression...)."""

    code = "raster_unreadable"


class EmptyRaster(RasterError):
    code = "empty_raster"


class RasterTooLarge(RasterError):
    """Declared larger than the engine reads (a side over raster.MAX_SIDE): refused at open,
    before any pixel buffer is allocated (a 2^31-pixel VRT costs a few bytes to write)."""

    code = "raster_too_large"


class BadGeoreference(RasterError):
    """Georeferencing that cannot place the raster: a non-finite or degenerate geotransform (inf or
    NaN from a world file or `.aux.xml`), or a CRS GDAL refuses to read (an `.aux.xml` `<SRS>` that
    names a file)."""

    code = "bad_georeference"


class BadFileName(RasterError):
    """A file name that is not valid UTF-8: GDAL's Python bindings cannot take it as a path."""

    code = "bad_file_name"


class BandError(RasterError):
    """Bands asked for that the raster does not have."""

    code = "bad_bands"


# -- model -------------------------------------------------------------------------------------
class ModelError(LrsFocusError):
    code = "model_error"


class ModelNotFound(ModelError):
    """Neither a local directory nor a reachable hub id."""

    code = "model_not_found"


class CheckpointMismatch(ModelError):
    """Missing or unexpected keys when loading a checkpoint strictly."""

    code = "checkpoint_mismatch"


# -- requests ----------------------------------------------------------------------------------
class BadOptions(LrsFocusError):
    code = "bad_options"


class OutputError(LrsFocusError):
    """A result file (`ask --out`, `--heatmap`) cannot be written; checked before the model runs
    where possible, so a long question is not asked for nothing."""

    code = "output_error"


class Cancelled(LrsFocusError):
    """A job stopped at a stage boundary because its cancel flag was set."""

    code = "cancelled"


# -- the answer on an OpenAI-compatible server (--answer-endpoint) ------------------------------
class AnswerServerError(LrsFocusError):
    """The answer server refused or failed the answer; the message carries the server's own words."""

    code = "answer_server_error"


class AnswerServerUnreachable(AnswerServerError):
    """No connection to the answer server (nothing listens there, DNS, a firewall...)."""

    code = "answer_server_unreachable"


class AnswerServerTimeout(AnswerServerError):
    """The answer server went silent for longer than --answer-timeout."""

    code = "answer_server_timeout"
