"""Processing algorithm "Ask raster": question in, focused tiles out, answer in the log.

`prepareAlgorithm` (main thread) checks the layer and copies its path and CRS;
`processAlgorithm` (a worker thread when run from the toolbox) talks to the backend through
the same Client as the dock's task, forwards progress and cancellation through `feedback`,
and writes every focused tile of every level (attribute `level`) into the sink.
"""

from __future__ import annotations

from typing import Any

from qgis.core import (
    Qgis,
    QgsFeatureSink,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingException,
    QgsProcessingOutputNumber,
    QgsProcessingOutputString,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSink,
    QgsProcessingParameterNumber,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingUtils,
    QgsWkbTypes,
)

from .. import settings
from ..compat import enum_value as _enum
from ..params import MODES, AskOptions, AskRequest, BackendSettings
from ..raster_check import check_layer
from ..result_layers import crs_for, memory_layer, shown, style_layer, to_feature


class AskRasterAlgorithm(QgsProcessingAlgorithm):
    INPUT, QUESTION, MODE, ALPHA, N_MAX, ENDPOINT, OUTPUT = (
        "INPUT", "QUESTION", "MODE", "ALPHA", "N_MAX", "ENDPOINT", "OUTPUT",
    )
    ANSWER, JOB_ID, TILES = "ANSWER", "JOB_ID", "TILES"

    def __init__(self):
        super().__init__()
        self._raster_path = ""
        self._crs = None
        self._dest_id = ""
        self._results: dict[str, Any] = {}

    def name(self) -> str:
        return "askraster"

    def displayName(self) -> str:  # noqa: N802
        return "Ask raster"

    def shortHelpString(self) -> str:  # noqa: N802
        return (
            "Asks the LRS Focus backend a question about a raster file. The answer goes to the log "
            "and the ANSWER output; the tiles the model focused on (every pyramid level, attribute "
            "'level', with score, rank and kept) go to the vector output, in the raster's CRS. "
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
                self.N_MAX, "N_max (0 = the model's default)", integer, defaults.n_max or 0, False, 0, 100000
            )
        )
        self.addParameter(
            QgsProcessingParameterString(self.ENDPOINT, "Backend endpoint (empty = plugin settings)", "", optional=True)
        )
        polygons = _enum((Qgis, "ProcessingSourceType.VectorPolygon"), (QgsProcessing, "SourceType.TypeVectorPolygon"))
        self.addParameter(QgsProcessingParameterFeatureSink(self.OUTPUT, "Focused tiles", polygons))
        self.addOutput(QgsProcessingOutputString(self.ANSWER, "Answer"))
        self.addOutput(QgsProcessingOutputString(self.JOB_ID, "Backend job id"))
        self.addOutput(QgsProcessingOutputNumber(self.TILES, "Number of focused tiles"))

    def prepareAlgorithm(self, parameters, context, feedback) -> bool:  # noqa: N802
        layer = self.parameterAsRasterLayer(parameters, self.INPUT, context)
        check = check_layer(layer)
        if not check.ok:
            raise QgsProcessingException(check.reason)
        self._raster_path, self._crs = check.path, layer.crs()
        return True

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        from ..client import BackendError, Cancelled, Client

        question = self.parameterAsString(parameters, self.QUESTION, context).strip()
        if not question:
            raise QgsProcessingException("the question is empty")
        options = AskOptions(
            mode=MODES[self.parameterAsEnum(parameters, self.MODE, context)],
            alpha=self.parameterAsDouble(parameters, self.ALPHA, context),
            n_max=self.parameterAsInt(parameters, self.N_MAX, context) or None,
        )
        backend = settings.load_backend()
        endpoint = self.parameterAsString(parameters, self.ENDPOINT, context).strip()
        if endpoint:
            backend = BackendSettings(endpoint, backend.start_command, backend.timeouts)
        request = AskRequest(self._raster_path, question, options)

        def on_progress(stage, level, fraction, message):
            feedback.setProgress(100.0 * fraction)
            feedback.setProgressText(f"{stage}" + (f" level {level}" if level is not None else ""))

        feedback.pushInfo(f"Asking {backend.endpoint}: {question}")
        try:
            with Client(backend.endpoint, backend.timeouts) as client:
                client.wait_healthy(backend.timeouts.health, feedback.isCanceled)
                result = client.ask(request, on_progress, feedback.isCanceled)
        except Cancelled:
            raise QgsProcessingException("cancelled") from None
        except BackendError as exc:
            raise QgsProcessingException(f"[{exc.code}] {exc}") from None

        crs = crs_for(result, self._crs)
        fields = memory_layer("fields", crs).fields()
        sink, self._dest_id = self.parameterAsSink(
            parameters, self.OUTPUT, context, fields, _enum((Qgis, "WkbType.Polygon"), (QgsWkbTypes, "Type.Polygon")), crs
        )
        if sink is None:
            raise QgsProcessingException(self.invalidSinkError(parameters, self.OUTPUT))
        template = memory_layer("template", crs)
        count = 0
        for feature in (result.get("features") or {}).get("features", []):
            if shown(feature):
                sink.addFeature(to_feature(template, feature), _enum((QgsFeatureSink, "Flag.FastInsert"), (QgsFeatureSink, "FastInsert")))
                count += 1
        answer = str(result.get("answer", ""))
        feedback.pushInfo(f"Answer: {answer}")
        if (result.get("model") or {}).get("random_weights"):
            feedback.reportError("The backend runs a random-weight test model (--model tiny): the answer is noise.",
                                 fatalError=False)
        feedback.pushInfo(f"{count} focused tiles; job {result.get('job_id', '')}")
        self._results = {
            self.OUTPUT: self._dest_id,
            self.ANSWER: answer,
            self.JOB_ID: str(result.get("job_id", "")),
            self.TILES: count,
        }
        return dict(self._results)

    def postProcessAlgorithm(self, context, feedback):  # noqa: N802
        """Main thread: style the output layer like the dock's layers when it is loaded."""
        layer = QgsProcessingUtils.mapLayerFromString(self._dest_id, context) if self._dest_id else None
        if layer is not None and layer.fields().indexOf("score") >= 0:
            style_layer(layer, [f["score"] for f in layer.getFeatures()])
        return dict(self._results)
