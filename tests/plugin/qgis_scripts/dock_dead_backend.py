"""Ask through the dock while nothing listens at the endpoint; measure how fast the message
comes and whether the main thread kept running (a QTimer ticking every 50 ms).

usage: dock_dead_backend.py ENDPOINT RASTER [KILL_PID]
With KILL_PID the backend is alive at first and gets SIGKILLed once the job is accepted.
"""

import os
import signal
import sys
import time

from qgis_env import FakeIface, add_raster, emit, load_plugin, start_qgis, wait_for

endpoint, raster = sys.argv[1:3]
kill_pid = int(sys.argv[3]) if len(sys.argv) > 3 else None
app = start_qgis()
from qgis.core import QgsSettings  # noqa: E402
from qgis.PyQt.QtCore import QTimer  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
QgsSettings().setValue("lrs_focus/health_timeout_s", 3.0)
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
plugin.dock.layer_combo.setLayer(layer)
plugin.dock.question.setText("Is there a bridge?")
ticks = [0]
timer = QTimer()
timer.timeout.connect(lambda: ticks.__setitem__(0, ticks[0] + 1))
timer.start(50)
state = {}
started = time.monotonic()
plugin.dock.ask_button.click()
task = plugin.task


def on_stage(stage, _text):
    if kill_pid and stage == "queued" and "killed_at" not in state:
        os.kill(kill_pid, signal.SIGKILL)
        state["killed_at"] = time.monotonic()


task.stageChanged.connect(on_stage)
task.failed.connect(lambda code, message: state.update(error=[code, message], end=time.monotonic()))
finished = wait_for(lambda: plugin.task is None, 90)
end = state.get("end", time.monotonic())
wait_for(lambda: False, 0.6)  # the message bar notice comes after QGIS's own task notice
emit({
    "finished": finished,
    "error": state.get("error"),
    "seconds": end - started,
    "seconds_after_kill": end - state["killed_at"] if "killed_at" in state else None,
    "ticks": ticks[0],
    "messages": iface.messages,
    "dock_stage": plugin.dock.stage.text(),
})
plugin.unload()
