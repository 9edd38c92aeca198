"""The needle generator: seeded, objects where the boxes say, questions that match the scene."""

import json

import numpy as np

from lrs_focus.train.data import image_views, load_conversations
from lrs_focus.train.synthetic import (
    COLOURS,
    SceneSpec,
    make_scene,
    render_scene,
    scene_questions,
    shape_mask,
    write_dataset,
)

SMALL = SceneSpec(size_range=(600, 700), object_size_range=(20, 30))


def test_scenes_are_seeded_and_objects_separate():
    a, b = make_scene(5, SMALL), make_scene(5, SMALL)
    assert a == b
    assert make_scene(6, SMALL) != a
    boxes = [o.box for o in a.objects]
    for i, p in enumerate(boxes):
        assert 0 <= p[0] < p[2] <= a.width and 0 <= p[1] < p[3] <= a.height
        for q in boxes[i + 1:]:
            assert p[2] <= q[0] or q[2] <= p[0] or p[3] <= q[1] or q[3] <= p[1]


def test_rendered_pixels_match_the_scene():
    scene = make_scene(11, SMALL)
    img = render_scene(scene)
    assert img.shape == (scene.height, scene.width, 3) and img.dtype == np.uint8
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        cy, cx = (y0 + y1) // 2, (x0 + x1) // 2 + 1
        assert tuple(img[cy, cx]) == COLOURS[obj.colour]


def test_shape_masks_differ():
    c, s, t = (shape_mask(n, 20) for n in ("circle", "square", "triangle"))
    assert s.all() and 0.7 < c.mean() < 0.85 and 0.4 < t.mean() < 0.6
    assert t[-1].sum() > t[0].sum()  # apex up


def test_questions_need_one_object():
    for seed in range(20):
        scene = make_scene(seed, SMALL)
        for q in scene_questions(scene, ("colour", "count")):
            if q.kind == "colour":
                (box,) = q.boxes
                (obj,) = [o for o in scene.objects if o.box == box]
                assert q.answer == obj.colour and obj.shape in q.question
                assert sum(o.shape == obj.shape for o in scene.objects) == 1
            else:
                shape = q.question.split()[2][:-1]
                assert len(q.boxes) == sum(o.shape == shape for o in scene.objects)


def test_dataset_roundtrip_llava_format(tmp_path):
    from lrs_focus.pyramid import PyramidConfig

    path = write_dataset(tmp_path, range(3), SMALL, kinds=("colour", "count"))
    records = json.loads(path.read_text())
    assert records and {"id", "image", "conversations"} <= set(records[0])
    assert records[0]["conversations"][0]["value"].startswith("<image>\n")
    samples = load_conversations(path)
    assert len(samples) == len(records)
    s = samples[0]
    assert s.image.exists() and s.turns[0][1] == records[0]["conversations"][1]["value"]
    assert "<image>" not in s.turns[0][0] and "boxes" in s.extra and s.extra["kind"] in ("colour", "count")
    views = image_views(s.image, PyramidConfig(tile_size=64, base_long_side=192, tokens_per_tile=4))
    assert views.thumbnail.shape == (64, 64, 3)
    assert views.tiles.shape[1:] == (64, 64, 3) and len(views.tiles) == views.grid[0] * views.grid[1]


def test_decoys_are_dull_other_shapes_and_never_asked_about():
    from lrs_focus.train.synthetic import DECOY_COLOURS

    spec = SceneSpec(size_range=(600, 700), object_size_range=(20, 30), n_objects=(1, 1), n_decoys=(2, 2))
    for seed in range(10):
        scene = make_scene(seed, spec)
        target = [o for o in scene.objects if not o.decoy]
        decoys = [o for o in scene.objects if o.decoy]
        assert len(target) == 1 and len(decoys) == 2
        assert all(d.shape != target[0].shape and d.colour in DECOY_COLOURS for d in decoys)
        (q,) = scene_questions(scene)
        assert q.answer == target[0].colour and q.boxes == (target[0].box,)
        img = render_scene(scene)
        x0, y0, x1, y1 = decoys[0].box
        assert tuple(img[(y0 + y1) // 2, (x0 + x1) // 2 + 1]) == DECOY_COLOURS[decoys[0].colour]
