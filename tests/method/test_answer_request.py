"""The answer-server request without a server: what is sent must be what the local path encodes.

Images: the thumbnail resized as the local image processor resizes it gives the processor's very
pixel values (so a server's processor has nothing left to resize); the message, rendered through the
checkpoint's chat template, is the local prompt's text; media ids tell tiles and views apart; the key
file is read once and never shown; what an answer server cannot do is refused in words.
"""

from __future__ import annotations

import numpy as np
import pytest

from lrs_focus.errors import BadOptions
from lrs_focus.features import ViewKey
from lrs_focus.remote_answer import (
    AnswerServer,
    _server_message,
    chat_content,
    media_uuid,
    resize_like_processor,
    view_digest,
)


@pytest.fixture(scope="module")
def vl():
    from lrs_focus.model.loading import load_model

    model, _, _ = load_model("tiny-qwen2.5-vl", device="cpu")
    return model


@pytest.mark.parametrize("size", [(700, 1000), (448, 301), (448, 448)])
def test_thumbnail_resized_like_the_processor_gives_its_pixels(vl, size):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
    grid = vl.grid_for(*size)
    sent = resize_like_processor(image, grid, vl.image_processor)
    assert sent.shape == (grid[1] * 14, grid[2] * 14, 3) and sent.dtype == np.uint8
    ours = vl.image_processor(images=[image], return_tensors="pt")
    theirs = vl.image_processor(images=[sent], return_tensors="pt")
    assert ours["image_grid_thw"].tolist() == theirs["image_grid_thw"].tolist() == [list(grid)]
    assert (ours["pixel_values"] == theirs["pixel_values"]).all()  # bit for bit


def test_message_renders_as_the_local_prompt(vl):
    """The content list through the chat template (image parts as the server's template sees them)
    is the text `build_prompt` renders, image pads and all."""
    grid = (1, 32, 32)
    images = [(None, grid), ("Detail of the top-left of the image:", grid), ("Detail of the centre of the image:", grid)]
    question = "How many ships are docked?"
    prompt = vl.build_prompt(images, question)
    pixels = np.zeros((448, 448, 3), dtype=np.uint8)
    content = chat_content([(c, pixels, f"id-{i}") for i, (c, _) in enumerate(images)], question)
    assert [p["type"] for p in content] == ["image_url", "text", "image_url", "text", "image_url", "text"]
    assert content[-1]["text"] == question and [p.get("uuid") for p in content[::2]] == ["id-0", "id-1", "id-2"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    text = vl.tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=vl.config.template,
                                            tokenize=False, add_generation_prompt=True)
    pad = vl.tokenizer.convert_ids_to_tokens(vl.image_token_id)
    expanded = text.replace(pad, pad * 256)
    assert vl.tokenizer(expanded, add_special_tokens=False)["input_ids"] == prompt.ids


def test_media_ids_tell_views_and_tiles_apart():
    key = ViewKey(identity=("/data/a.tif", ("a.tif", 10, 1.0)), bands=(1, 2, 3), stretch=None, window=None,
                  pixels="gdal", model="m", dtype="float32")
    moved = ViewKey(identity=("/data/a.tif", ("a.tif", 10, 2.0)), bands=(1, 2, 3), stretch=None, window=None,
                    pixels="gdal", model="m", dtype="float32")
    d = view_digest(key, (448, 1344, [0, 0, 0]))
    assert d == view_digest(key, (448, 1344, [0, 0, 0]))  # stable across questions
    assert d != view_digest(moved, (448, 1344, [0, 0, 0])) != view_digest(key, (512, 1536, [0, 0, 0]))
    ids = {media_uuid(d, level, r, c) for level in (0, 1) for r in range(3) for c in range(3)}
    assert len(ids) == 18 and media_uuid(None, 0, 0, 0) is None


def test_endpoint_key_file_and_messages(tmp_path):
    from lrs_focus.commands._answer_server import DEFAULT_ANSWER_TIMEOUT_S
    from lrs_focus.remote_answer import DEFAULT_TIMEOUT_S

    assert DEFAULT_ANSWER_TIMEOUT_S == DEFAULT_TIMEOUT_S  # --help's copy of the default
    key = tmp_path / "key"
    key.write_text("sk-secret-123\n")
    server = AnswerServer.from_options("http://user:pw@127.0.0.1:8000/v1/", "m", str(key), 5.0)
    assert server.endpoint == "http://user:pw@127.0.0.1:8000/v1" and server.headers() == {
        "Authorization": "Bearer sk-secret-123"}
    assert "secret" not in repr(server) and "pw" not in str(server.describe())
    assert server.describe() == {"endpoint": "http://127.0.0.1:8000/v1", "model": "m"}
    assert AnswerServer.from_options(None) is None
    for bad in ("127.0.0.1:8000", "ftp://host/v1", "http:///v1"):
        with pytest.raises(BadOptions):
            AnswerServer(bad)
    with pytest.raises(BadOptions, match="need --answer-endpoint"):
        AnswerServer.from_options(None, "m")
    with pytest.raises(BadOptions, match="cannot read"):
        AnswerServer.from_options("http://h/v1", key_file=str(tmp_path / "missing"))
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(BadOptions, match="empty"):
        AnswerServer.from_options("http://h/v1", key_file=str(tmp_path / "empty"))
    assert _server_message(404, b'{"error": {"message": "The model `x` does not exist.", "code": 404}}') == \
        "HTTP 404: The model `x` does not exist."
    assert _server_message(400, b'{"object": "error", "message": "too long"}') == "HTTP 400: too long"
    assert _server_message(502, b"<html>bad gateway</html>") == "HTTP 502: <html>bad gateway</html>"


def test_refusals_llava_and_pruned_tokens(sentinel2_vrt):
    from lrs_focus.engine import AskOptions, Engine

    server = AnswerServer("http://127.0.0.1:9/v1")
    with pytest.raises(BadOptions, match="LLaVA"):
        Engine("tiny", device="cpu", answer_server=server)
    engine = Engine("tiny-qwen2.5-vl", device="cpu", answer_server=server, cache_mb=0)
    with pytest.raises(BadOptions, match="answer-input tokens"):
        engine.ask(str(sentinel2_vrt), "Where?", AskOptions(answer_input="tokens"))
