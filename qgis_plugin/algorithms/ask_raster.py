"""Processing algorithm "Ask raster": question in, focused tiles (+ heatmap) out, answer in the log.

`prepareAlgorithm` (main thread) checks the layer and copies what the worker needs: its path,
CRS, the bands and stretch it displays, and its geotransform. `processAlgorithm` (a worker
thread when run from the toolbox) talks to the backend through the same Client as the dock's
task, forwards progress and cancellation through `feedback`, writes every focused tile of every
level (attributes `level`, `focus_rank`...) into the sink and, if asked, the score heatmap as a
GeoTIFF. Loaded outputs are styled by layer post-processors (main thread): focus tiles outlined
and ranked 1..n, other levels faint; the heatmap in quantile classes.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingLayerPostProcessorInterface,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProject,
    QgsWkbTypes,
)

from .. import settings
from ..compat import enum_value as _enum
from ..display_bands import choose, displayed_bands, parse_bands
from ..display_text import clean_text
from ..params import MAX_N_MAX, MODES, AskOptions, AskRequest, BackendSettings
from ..raster_check import check_layer

#: Post-processors must outlive processAlgorithm (QGIS keeps only a C++ pointer to them).
_KEEP_ALIVE: list = []


class _Styler(QgsProcessingLayerPostProcessorInterface):
    def __init__(self, style):
        super().__init__()
        self.style = style

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802
        self.style(layer)

    @staticmethod
    def attach(context, dest_id: str, style) -> None:
        if dest_id and context.willLoadLayerOnCompletion(dest_id):
            styler = _Styler(style)
            _KEEP_ALIVE.append(styler)
            context.layerToLoadOnCompletionDetails(dest_id).setPostProcessor(styler)


def _below_other_outputs(layer, raster_id: str) -> None:
    """Move the heatmap's node just above the asked raster, so the tiles' outlines stay on top
    (QGIS loads outputs in the order of their paths, each at the top of the tree)."""
    root = QgsProject.instance().layerTreeRoot()
    node, raster = root.findLayer(layer.id()), root.findLayer(raster_id)
    if node is None or raster is None or node.parent() is not raster.parent():
        return
    parent = node.parent()
    clone = node.clone()
    parent.insertChildNode(parent.children().index(raster), clone)
    parent.removeChildNode(node)


def layer_title(question: str, limit: int = 50) -> str:
    """'Q: <question>' shortened, so every run's layers say which question they answer."""
    text = " ".join(clean_text(question).split())
    return f"Q: {text if len(text) <= limit else text[: limit - 3] + '...'}"


class AskRasterAlgorithm(QgsProcessingAlgorithm):
    INPUT, QUESTION, MODE, ALPHA, N_MAX, BANDS, AREA, ENDPOINT, OUTPUT, HEATMAP = (
        "INPUT", "QUESTION", "MODE", "ALPHA", "N_MAX", "BANDS", "AREA", "ENDPOINT", "OUTPUT", "HEATMAP",
    )
    ANSWER, JOB_ID, TILES = "ANSWER", "JOB_ID", "TILES"

    def __init__(self):
        super().__init__()
        self._raster_path = ""
        self._crs = None
        self._band_count = 0
        self._displayed = None
        self._ground = None
        self._raster_id = ""

    def name(self) -> str:
        return "askraster"

    def displayName(self) -> str:  # noqa: N802
        return "Ask raster"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Asks the LRS Focus backend a question about a raster file. The answer goes to the log "
            "and the ANSWER output. The tiles the model looked at (every pyramid level, attribute "
            "'level', with score, kept and the pixel window x0 y0 x1 y1) go to the vector output, in "
            "the raster's CRS; 'focus_rank' numbers the tiles it finally kept 1..n (1 = most attention). "
            "The heatmap output (on by default) is the final level's token scores as a Float32 GeoTIFF "
            "on the raster. "
            "The model sees the bands the layer displays, with its min/max stretch, unless Bands "
            "overrides them; Area limits the question to part of the raster. "
            "The backend must be running (lrs-focus serve) at the endpoint of the plugin settings."
        )

    def createInstance(self):  # noqa: N802
        return AskRasterAlgorithm()

    def initAlgorithm(self, config=None):  # noqa: N802
        defaults = settings.load_options()
        self.addParameter(QgsProcessingParameterRasterLayer(self.INPUT, "Raster (a local file)"))
        self.addParameter(QgsProcessingParameterString(self.QUESTION, "Question", multiLine=True))
        self.addParameter(
            QgsProcessingParameterEnum(self.MODE, "Mode", options=list(MODES), defaultValue=MODES.index(defaults.mode))
        )
        double = _enum((Qgis, "ProcessingNumberParameterType.Double"), (QgsProcessingParameterNumber, "Type.Double"))
        integer = _enum((Qgis, "ProcessingNumberParameterType.Integer"), (QgsProcessingParameterNumber, "Type.Integer"))
        self.addParameter(
            QgsProcessingParameterNumber(self.ALPHA, "Kept fraction alpha", double, defaults.alpha, False, 0.01, 1.0)
        )
        self.addParameter(
            QgsProcessingParameterNumber(
                self.N_MAX, "N_max (0 = the model's default)", integer, defaults.n_max or 0, False, 0, MAX_N_MAX
            )
        )
        self.addParameter(QgsProcessingParameterString(
            self.BANDS, "Bands the model sees, e.g. 4,3,2 (empty = as the layer displays them)", "", optional=True))
        self.addParameter(QgsProcessingParameterExtent(self.AREA, "Area to ask about (empty = the whole raster)",
                                                       optional=True))
        self.addParameter(
            QgsProcessingParameterString(self.ENDPOINT, "Backend endpoint (empty = plugin settings)", "", optional=True)
        )
        polygons = _enum((Qgis, "ProcessingSourceType.VectorPolygon"), (QgsProcessing, "SourceType.TypeVectorPolygon"))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Focused tiles", polygons))
        self.addParameter(QgsProcessingParameterRasterDestination(
            self.HEATMAP, "Attention heatmap", QgsProcessing.TEMPORARY_OUTPUT, optional=True, createByDefault=True))
        self.addOutput(QgsProcessingOutputString(self.ANSWER, "Answer"))
        self.addOutput(QgsProcessingOutputString(self.JOB_ID, "Backend job id"))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, "Number of focused tiles"))

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:  # noqa: N802
        from ..result_files import raster_ground

        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        check = check_layer(layer)
        if not check.ok:
            raise QgsProcessingException(check.reason)
        self._raster_path, self._crs, self._band_count = check.path, layer.crs(), layer.bandCount()
        self._raster_id = layer.id()
        self._displayed = displayed_bands(layer)
        try:
            self._ground = raster_ground(check.path)
        except (OSError, RuntimeError) as exc:
            raise QgsProcessingException(f"GDAL cannot open {check.path}: {exc}") from None
        return True

    def _options(self, parameters, context) -> AskOptions:
        from ..area import pixel_window

        override, reason = parse_bands(self.parameterAsString(parameters, self.BANDS, context) or "", self._band_count)
        if reason:
            raise QgsProcessingException(reason)
        bands, stretch = choose(self._displayed, override)
        window = None
        if parameters.get(self.AREA):
            rect = self.parameterAsExtent(parameters, self.AREA, context, self._crs)
            corners = [(rect.xMinimum(), rect.yMinimum()), (rect.xMaximum(), rect.yMinimum()),
                       (rect.xMaximum(), rect.yMaximum()), (rect.xMinimum(), rect.yMaximum())]
            window = pixel_window(corners, self._ground.geotransform, self._ground.width, self._ground.height)
            if window is None:
                raise QgsProcessingException("the area does not overlap the raster")
        return AskOptions(
            mode=MODES[self.parameterAsEnum(parameters, self.MODE, context)],
            alpha=self.parameterAsDouble(parameters, self.ALPHA, context),
            n_max=self.parameterAsInt(parameters, self.N_MAX, context) or None,
            bands=bands, stretch=stretch, window=window,
        )

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        question = self.parameterAsString(parameters, self.QUESTION, context).strip()
        if not question:
            raise QgsProcessingException("the question is empty")
        options = self._options(parameters, context)
        backend = settings.load_backend()
        endpoint = self.parameterAsString(parameters, self.ENDPOINT, context).strip()
        if endpoint:
            backend = BackendSettings(endpoint, backend.start_command, backend.timeouts)
        heat_path = self.parameterAsOutputLayer(parameters, self.HEATMAP, context) or ""
        result = self._ask(backend, AskRequest(self._raster_path, question, options), feedback)

        title = layer_title(question)
        count, dest_id = self._write_tiles(parameters, context, result, title)
        heat_id = self._write_heatmap(heat_path, context, result, feedback, title)
        answer = clean_text(result.get("answer", ""))
        feedback.pushInfo(f"Answer: {answer}")
        if (result.get("model") or {}).get("random_weights"):
            feedback.reportError("The backend runs a random-weight test model (a tiny preset): the answer is noise.",
                                 fatalError=False)
        feedback.pushInfo(f"{count} tiles, {sum(1 for _ in self._focus(result))} of them in focus; "
                          f"job {result.get('job_id', '')}")
        out = {self.OUTPUT: dest_id, self.ANSWER: answer, self.JOB_ID: str(result.get("job_id", "")), self.TILES: count}
        if heat_id:
            out[self.HEATMAP] = heat_id
        return out

    def _ask(self, backend: BackendSettings, request: AskRequest, feedback) -> dict[str, Any]:
        from ..deps import missing_zmq_text, zmq_problem
        from ..progress import OverallProgress, stage_text

        problem = zmq_problem()
        if problem:
            raise QgsProcessingException(missing_zmq_text(problem).replace("\n", " "))
        from ..client import BackendError, Cancelled, Client
        from ..remote import ask

        bar = OverallProgress()

        def on_progress(stage, level, fraction, message, overall=None):
            feedback.setProgress(bar.update(stage, level, fraction, overall))
            feedback.setProgressText(stage_text(stage, level, message))

        opts = request.options
        bands = ",".join(map(str, opts.bands)) if opts.bands else "the backend's default"
        window = "pixel window " + ",".join(map(str, opts.window)) if opts.window else "the whole raster"
        feedback.pushInfo(f"Asking {backend.endpoint}: {request.question} (bands {bands}; {window})")
        try:
            with Client(backend.endpoint, backend.timeouts) as client:
                client.wait_healthy(backend.timeouts.health, feedback.isCanceled)
                return ask(client, request, on_progress, feedback.isCanceled)
        except Cancelled:
            raise QgsProcessingException("cancelled") from None
        except BackendError as exc:
            raise QgsProcessingException(f"[{exc.code}] {exc}") from None

    @staticmethod
    def _focus(result):
        for feature in (result.get("features") or {}).get("features", []):
            if (feature.get("properties") or {}).get("focus_rank") is not None:
                yield feature

    def _write_tiles(self, parameters, context, result, title: str) -> tuple[int, str]:
        from ..result_layers import crs_for, template_layer, to_feature
        from ..result_style import style_all_levels

        crs = crs_for(result, self._crs)
        fields = template_layer(crs).fields()
        sink, dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, _enum((Qgis, "WkbType.Polygon"), (QgsWkbTypes, "Type.Polygon")), crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        fast = _enum((QgsFeatureSink, "Flag.FastInsert"), (QgsFeatureSink, "FastInsert"))
        count = 0
        for feature in (result.get("features") or {}).get("features", []):
            sink.addFeature(to_feature(fields, feature), fast)
            count += 1
        final = (result.get("trace") or {}).get("stopped_at")

        def style(layer):
            layer.setName(f"{title}: focus tiles (level {final}) and coarser tiles")
            style_all_levels(layer)

        _Styler.attach(context, dest_id, style)
        return count, dest_id

    def _write_heatmap(self, path: str, context, result, feedback, title: str) -> str:
        from .. import heatmap
        from ..result_style import style_heatmap
        from ..results_store import heat_breaks, split_by_level

        if not path:
            return ""
        try:
            grid = heatmap.decode(result.get("heatmap"))
        except heatmap.HeatmapError as exc:
            raise QgsProcessingException(f"the result's heatmap is unreadable: {exc}") from None
        if grid is None:
            feedback.reportError("No heatmap: thumbnail mode scores no tokens.", fatalError=False)
            return ""
        crs_wkt = self._crs.toWkt() if self._crs is not None and self._crs.isValid() else ""
        # the final level's cells, as on the dock's map: coarser levels' blocks outside the focus
        # would outshine it (the whole grid is `lrs-focus ask --heatmap`)
        props = [f.get("properties") or {} for f in (result.get("features") or {}).get("features", [])]
        levels = split_by_level(grid, props)
        if levels:
            grid = heatmap.HeatmapGrid(levels[0][1], grid.window, levels[0][0], grid.units)
        heatmap.write_geotiff(path, grid, self._ground.geotransform, crs_wkt)
        breaks = heat_breaks(grid.values)
        raster_id = self._raster_id

        def style(layer):
            layer.setName(f"{title}: attention, level {grid.level} (final)")
            style_heatmap(layer, breaks)
            _below_other_outputs(layer, raster_id)

        _Styler.attach(context, path, style)
        return path
