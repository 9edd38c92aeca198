"""The plugin's side of the shared client: one AskRequest asked through `client.Client`.

client.py is the backend's own client file (a symlink here; the zip carries a copy), so it knows
nothing of the plugin's parameter objects: this maps an AskRequest onto `submit` + `wait` and
reports the queue position as a first "queued" progress step. Qt-free, like the client.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .params import AskRequest

ProgressFn = Callable[[str, Optional[int], float, str], None]


def ask(client, request: AskRequest, on_progress: Optional[ProgressFn] = None,
        is_canceled: Optional[Callable[[], bool]] = None) -> dict[str, Any]:
    """The engine's result document plus `job_id`; raises the client's Cancelled / BackendError."""
    from .client import Cancelled

    if is_canceled is not None and is_canceled():
        raise Cancelled()
    accepted = client.submit(request.raster_path, request.question, request.options.to_request())
    if on_progress is not None:
        on_progress("queued", None, 0.0, f"queued at position {accepted.get('position', 0)}")
    return client.wait(accepted, on_progress, is_canceled)
