"""The Qwen-VL answer stage sent to an answer server: the pixels of the images the local prompt holds.

`vl_answer.answer_tiles` chooses the images (thumbnail, kept tiles within the budget, raster order)
and renders the local prompt; this gathers the same images' pixels from the pyramid (the thumbnail as
the encoder reads it, resized as the image processor resizes it; each tile as encoded), sends them
with their captions and the question (remote_answer.py), and records where the answer came from.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from .remote_answer import (
    AnswerServer,
    RemoteReply,
    answer_remote,
    chat_content,
    media_uuid,
    resize_like_processor,
    view_digest,
)


class RemoteAnswer:
    def __init__(self, server: AnswerServer, model: Any, pyramid: Any, key: Any):
        self.server, self.model, self.pyramid = server, model, pyramid
        cfg = pyramid.geometry.cfg
        self.digest = view_digest(key, (cfg.tile_size, cfg.base_long_side, list(cfg.pad_rgb))) if key is not None else None
        self.reply: RemoteReply | None = None
        self.local_prompt_ids: list[int] = []

    def images(self, captions: Sequence[tuple[str | None, tuple[int, int, int]]], level: int,
               tiles: Sequence[tuple[int, int]]) -> list[tuple[str | None, Any, str | None]]:
        """(caption, pixels, uuid) of the thumbnail and `tiles` of `level`, in the prompt's order."""
        th, tw = self.pyramid.geometry.thumbnail_size
        thumb = self.pyramid.thumbnail()[:th, :tw]  # the image part, as TileEncoder.thumbnail reads it
        thumb = resize_like_processor(thumb, captions[0][1], self.model.image_processor)
        out = [(captions[0][0], thumb, media_uuid(self.digest, "thumbnail", 0, 0))]
        pixels = self.pyramid.tiles(level, list(tiles)) if tiles else []
        for (caption, _), (row, col), image in zip(captions[1:], tiles, pixels):
            out.append((caption, image, media_uuid(self.digest, level, row, col)))
        return out

    def answer(self, captions: Sequence[tuple[str | None, tuple[int, int, int]]], level: int,
               tiles: Sequence[tuple[int, int]], question: str, prompt: Any, max_new_tokens: int,
               should_stop: Callable[[], bool] | None) -> str:
        content = chat_content(self.images(captions, level, tiles), question)
        self.local_prompt_ids = list(prompt.ids)
        self.reply = answer_remote(self.server, content, max_new_tokens, should_stop)
        return self.reply.text

    def source(self) -> dict[str, Any]:
        """`trace.answer`: the server, its model, and whether it read the prompt we rendered."""
        reply = self.reply
        doc: dict[str, Any] = {"source": "answer-server", **self.server.describe()}
        if reply is not None:
            doc.update(prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                       finish_reason=reply.finish_reason, seconds=round(reply.seconds, 4))
            if reply.prompt_token_ids:  # vLLM reports them: the server's rendering equals ours, or not
                doc["same_prompt_ids"] = reply.prompt_token_ids == self.local_prompt_ids
            if reply.token_ids:
                doc["token_ids"] = reply.token_ids
        return doc
