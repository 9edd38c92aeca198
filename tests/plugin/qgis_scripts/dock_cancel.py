"""Ask through the dock, press Cancel as soon as the backend accepted the job.

usage: dock_cancel.py ENDPOINT RASTER
"""

import sys
import time

from qgis_env import FakeIface, add_raster, ask_in_dock, emit, load_plugin, start_qgis, wait_for

endpoint, raster = sys.argv[1:3]
app = start_qgis()
from qgis.core import QgsProject, QgsSettings  # noqa: E402

QgsSettings().setValue("lrs_focus/endpoint", endpoint)
layer = add_raster(raster)
iface = FakeIface()
plugin = load_plugin(iface)
task = ask_in_dock(plugin, layer, "How many ships are there?")
state = {"stages": []}


def on_stage(stage, _text):
    state["stages"].append(stage)
    if stage == "queued" and "cancel_at" not in state:
        state["cancel_at"] = time.monotonic()
        plugin.dock.cancel_button.click()


task.stageChanged.connect(on_stage)
task.failed.connect(lambda code, message: state.update(error=[code, message], end=time.monotonic()))
task.answered.connect(lambda result, layers: state.update(answered=True, end=time.monotonic()))
finished = wait_for(lambda: plugin.task is None, 120)
emit({
    "finished": finished,
    "stages": state["stages"],
    "error": state.get("error"),
    "answered": state.get("answered", False),
    "cancel_seconds": state["end"] - state["cancel_at"] if "end" in state and "cancel_at" in state else None,
    "groups": [g.name() for g in QgsProject.instance().layerTreeRoot().findGroups()],
    "dock_stage": plugin.dock.stage.text(),
    "ask_enabled": plugin.dock.ask_button.isEnabled(),
    "messages": iface.messages,
})
plugin.unload()
