"""The ringed-needle generator: seeded, objects where the boxes say, a question the scene answers,
and held-out geometry that keeps the task's premise (ring visible at base, dot legible only finer)."""

import json

import numpy as np
import pytest

from lrs_focus.pyramid import PyramidConfig, PyramidGeometry
from lrs_focus.train.data import image_views, load_conversations
from lrs_focus.train.synthetic import (
    COLOURS,
    QUESTION,
    RING_RGB,
    Ring,
    Scene,
    SceneSpec,
    make_scene,
    render_background,
    render_scene,
    scene_questions,
    write_dataset,
)

SMALL = SceneSpec(size_range=(600, 700), ring_range=(0.1, 0.2), dot_ratio=(0.1, 0.3), n_empty_rings=(1, 1),
                  n_loose_dots=(2, 3))
TINY_PYRAMID = PyramidConfig(tile_size=56, base_long_side=168, tokens_per_tile=4)


def _apart(a, b, gap=0):
    return a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1]


def _inside(inner, outer):
    return outer[0] <= inner[0] and outer[1] <= inner[1] and inner[2] <= outer[2] and inner[3] <= outer[3]


def test_scenes_are_seeded():
    assert make_scene(5, SMALL) == make_scene(5, SMALL)
    assert make_scene(6, SMALL) != make_scene(5, SMALL)
    np.testing.assert_array_equal(render_background(50, 70, 3), render_background(50, 70, 3))
    assert not np.array_equal(render_background(50, 70, 3), render_background(50, 70, 4))


@pytest.mark.parametrize("seed", range(30))
def test_layout_matches_the_spec(seed):
    scene = make_scene(seed, SMALL)
    long_side = max(scene.height, scene.width)
    assert 600 <= long_side <= 700
    target = scene.target
    assert target.dot is not None and all(r.dot is None for r in scene.rings[1:])  # one dotted ring
    d = target.box[2] - target.box[0]
    assert 0.1 * long_side - 1 <= d <= 0.2 * long_side + 1
    dot = target.dot.box
    assert 0.1 * d - 1 <= dot[2] - dot[0] <= 0.3 * d + 1
    assert abs((dot[0] + dot[2]) - (target.box[0] + target.box[2])) <= 1  # centred
    boxes = [r.box for r in scene.rings] + [o.box for o in scene.loose_dots]
    for i, a in enumerate(boxes):
        assert 0 <= a[0] < a[2] <= scene.width and 0 <= a[1] < a[3] <= scene.height
        assert all(_apart(a, b) for b in boxes[i + 1:])
    # decoy dots never carry the answer: a model reading "any coloured dot" answers wrong
    assert all(o.colour != target.dot.colour and not any(_inside(o.box, r.box) for r in scene.rings)
               for o in scene.loose_dots)


def test_rendered_pixels_match_the_scene():
    scene = make_scene(11, SMALL)
    img = render_scene(scene)
    assert img.shape == (scene.height, scene.width, 3) and img.dtype == np.uint8
    x0, y0, x1, y1 = scene.target.box
    cy = (y0 + y1) // 2
    assert tuple(img[cy, x0 + 2]) == RING_RGB  # left edge of the ring
    assert tuple(img[cy, (x0 + x1) // 2]) == COLOURS[scene.target.dot.colour]  # the dot at the centre
    between = img[cy, x0 + (x1 - x0) // 4]  # inside the ring, outside the dot: ground
    assert tuple(between) != RING_RGB and tuple(between) not in COLOURS.values()
    for dot in scene.loose_dots:
        cx, cy = (dot.box[0] + dot.box[2]) // 2, (dot.box[1] + dot.box[3]) // 2
        assert tuple(img[cy, cx]) == COLOURS[dot.colour]


def test_one_question_about_the_dotted_ring():
    for seed in range(10):
        scene = make_scene(seed, SMALL)
        (q,) = scene_questions(scene)
        assert q.question == QUESTION and q.answer == scene.target.dot.colour
        assert q.boxes == (scene.target.dot.box,) and q.marker == scene.target.box


def test_a_scene_whose_first_ring_is_empty_has_no_question():
    scene = make_scene(3, SMALL)
    broken = Scene(scene.seed, scene.height, scene.width, (Ring(scene.target.box),), scene.loose_dots)
    with pytest.raises(ValueError, match="first ring"):
        scene_questions(broken)


def test_answers_are_balanced():
    answers = [make_scene(s).target.dot.colour for s in range(400)]
    counts = [answers.count(c) for c in COLOURS]
    assert min(counts) > 60, counts


def test_held_out_geometry_keeps_the_premise():
    """Default held-out scenes on the tiny model's pyramid: the ring spans about a base token (visible),
    the dot is under 2 px at the base level and at least 4 px at level 2 (where it can be read)."""
    spec = SceneSpec()
    for seed in range(1_000_000, 1_000_020):
        scene = make_scene(seed, spec)
        geo = PyramidGeometry(scene.height, scene.width, TINY_PYRAMID)
        base, level2 = geo.levels[0].scale, geo.levels[2].scale
        ring = scene.target.box[2] - scene.target.box[0]
        dot = scene.target.dot.box[2] - scene.target.dot.box[0]
        assert 14 <= ring * base <= 21  # one base token is 14 px
        assert dot * base < 2.0 and dot * level2 >= 4.0


def test_a_ring_that_cannot_fit_is_an_error():
    with pytest.raises(ValueError, match="does not fit"):
        make_scene(0, SceneSpec(size_range=(100, 100), ring_range=(0.95, 0.99)))


def test_dataset_roundtrip_llava_format(tmp_path):
    path = write_dataset(tmp_path, range(3), SMALL)
    records = json.loads(path.read_text())
    assert len(records) == 3 and {"id", "image", "conversations", "boxes", "marker"} <= set(records[0])
    assert records[0]["conversations"][0]["value"] == f"<image>\n{QUESTION}"
    samples = load_conversations(path)
    s = samples[0]
    assert s.image.exists() and s.turns == [(QUESTION, records[0]["conversations"][1]["value"])]
    assert s.extra["boxes"] == records[0]["boxes"]
    views = image_views(s.image, TINY_PYRAMID)
    assert views.thumbnail.shape == (56, 56, 3)
    assert views.tiles.shape[1:] == (56, 56, 3) and len(views.tiles) == views.grid[0] * views.grid[1]
