"""Nothing listens at the endpoint, a start command is set: the plugin starts it (argument
list, no shell), health-checks it, asks, and stops it on unload.

usage: start_command.py ENDPOINT RASTER COMMAND
"""

import sys
import time

from qgis_env import FakeIface, add_raster, emit, load_plugin, start_qgis, wait_for

endpoint, raster, command = sys.argv[1:4]
app = start_qgis()
from qgis.core import QgsSettings  # noqa: E402

s = QgsSettings()
s.setValue("lrs_focus/endpoint", endpoint)
s.setValue("lrs_focus/start_command", command)
s.setValue("lrs_focus/health_timeout_s", 2.0)
s.setValue("lrs_focus/start_timeout_s", 180.0)
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
plugin.dock.layer_combo.setLayer(layer)
plugin.dock.question.setText("Is there a road?")
state = {"stages": []}
started = time.monotonic()
plugin.dock.ask_button.click()
task = plugin.task
task.stageChanged.connect(lambda stage, text: state["stages"].append(stage))
task.answered.connect(lambda result, layers: state.update(answer=result.get("answer"), layers=len(layers)))
task.failed.connect(lambda code, message: state.update(error=[code, message]))
finished = wait_for(lambda: plugin.task is None, 240)
process = plugin.launcher._process
pid = process.pid if process is not None else None
running_after_answer = plugin.launcher.running()
plugin.unload()
emit({
    "finished": finished,
    "seconds": time.monotonic() - started,
    "stages": state["stages"],
    "answer": state.get("answer"),
    "layers": state.get("layers"),
    "error": state.get("error"),
    "pid": pid,
    "running_after_answer": running_after_answer,
    "exit_code_after_unload": process.poll() if process is not None else None,
})
