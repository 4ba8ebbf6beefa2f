import io
import itertools
import math
import random
import time

import numpy as np
import pytest
from PIL import Image

from trilora.data.folder import scan
from trilora.toy.world import (
    BASE_STYLES,
    COLOURS,
    FLOORS,
    JITTER,
    STYLES,
    TIMES,
    UNSEEN_STYLES,
    Attributes,
    caption,
    parse_caption,
    render,
    render_dataset,
    render_mask,
    sample_attributes,
)

ALL = [Attributes(*combination) for combination in itertools.product(STYLES, COLOURS, FLOORS, TIMES)]


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_captions_read_as_sentences():
    assert (
        caption(Attributes("gothic", "red", 3, "dusk")) == "a red gothic building with three floors at dusk"
    )
    assert (
        caption(Attributes("modern", "orange", 1, "day"))
        == "an orange modern building with one floor during the day"
    )
    assert (
        caption(Attributes("onion", "white", 2, "night"))
        == "a white onion-domed building with two floors at night"
    )


def test_every_caption_parses_back_to_its_attributes():
    captions = {caption(a) for a in ALL}
    assert len(captions) == len(ALL)
    for a in ALL:
        assert parse_caption(caption(a)) == a
    assert parse_caption("  A Red  GOTHIC building with three floors at dusk\n") == Attributes(
        "gothic", "red", 3, "dusk"
    )


@pytest.mark.parametrize(
    "text, problem",
    [
        ("a teal gothic building with three floors at dusk", "unknown colour 'teal'"),
        ("a red baroque building with three floors at dusk", "unknown style 'baroque'"),
        ("a red onion building with three floors at dusk", "unknown style 'onion'"),
        ("a red gothic building with four floors at dusk", "unknown floors 'four'"),
        ("a red gothic building with three floors at noon", "unknown time 'at noon'"),
        ("a castle", "not a toy-world caption"),
        ("sks, a red gothic building with three floors at dusk", "not a toy-world caption"),
    ],
)
def test_parse_caption_names_what_it_does_not_know(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_caption(text)


def test_attributes_refuse_unknown_values():
    with pytest.raises(ValueError, match="unknown style 'baroque'"):
        Attributes("baroque", "red", 1, "day")
    with pytest.raises(ValueError, match="unknown floors 4"):
        Attributes("modern", "red", 4, "day")


def test_unseen_styles_are_not_base_styles():
    assert set(UNSEEN_STYLES) and not set(UNSEEN_STYLES) & set(BASE_STYLES)
    assert set(UNSEEN_STYLES) | set(BASE_STYLES) == set(STYLES)
    assert len(BASE_STYLES) >= 4 and len(COLOURS) >= 6 and len(TIMES) >= 2


def test_sample_attributes_draws_from_what_it_is_given():
    rng = random.Random(0)
    drawn = [sample_attributes(rng) for _ in range(2000)]
    assert {a.style for a in drawn} == set(BASE_STYLES)
    assert {a.colour for a in drawn} == set(COLOURS)
    assert {a.floors for a in drawn} == set(FLOORS) and {a.time for a in drawn} == set(TIMES)
    only = [sample_attributes(rng, styles=UNSEEN_STYLES, colours=("red", "blue")) for _ in range(200)]
    assert {a.style for a in only} == set(UNSEEN_STYLES) and {a.colour for a in only} == {"red", "blue"}
    with pytest.raises(ValueError, match="unknown colour 'teal'"):
        sample_attributes(rng, colours=("teal",))
    assert [sample_attributes(random.Random(5)) for _ in range(3)] == [
        sample_attributes(random.Random(5))
    ] * 3


def test_render_is_a_function_of_attributes_seed_and_size():
    a = Attributes("tudor", "green", 2, "night")
    assert png_bytes(render(a, 7)) == png_bytes(render(a, 7))
    assert np.array_equal(render_mask(a, 7), render_mask(a, 7))
    images = {png_bytes(render(a, seed)) for seed in range(20)}
    assert len(images) == 20
    random.seed(1)
    first = png_bytes(render(a, 3))
    random.seed(2)
    np.random.seed(2)
    assert png_bytes(render(a, 3)) == first  # no global random state


def test_a_seed_fixes_the_layout_whatever_the_colour_and_time():
    for style, seed in itertools.product(STYLES, range(5)):
        masks = [
            render_mask(Attributes(style, colour, 2, time), seed) for colour in COLOURS for time in TIMES
        ]
        assert all(np.array_equal(masks[0], mask) for mask in masks)


def test_every_combination_renders_inside_the_frame_at_32_and_64():
    for size in (32, 64):
        for seed, a in enumerate(ALL):
            image = render(a, seed, size)
            assert image.size == (size, size) and image.mode == "RGB"
            building = render_mask(a, seed, size) > 0.5
            assert building.sum() > 0.04 * size * size
            # nothing cut off: the top row and the side columns are sky
            assert not building[0].any() and not building[:, 0].any() and not building[:, -1].any()


def test_windows_come_in_one_row_per_floor():
    for style, floors, seed in itertools.product(STYLES, FLOORS, range(10)):
        windows = render_mask(Attributes(style, "red", floors, "day"), seed, 32, part="window") > 0.5
        rows = windows.any(axis=1)
        runs = int(rows[0]) + int((rows[1:] & ~rows[:-1]).sum())
        assert runs == floors + (style == "gothic"), (style, floors, seed)  # + the gothic tower's window


def test_more_floors_make_a_taller_building():
    for style, seed in itertools.product(STYLES, range(10)):
        heights = []
        for floors in FLOORS:
            rows = (render_mask(Attributes(style, "blue", floors, "dusk"), seed) > 0.5).any(axis=1)
            heights.append(int(rows.sum()))
        assert heights[0] + 3 <= heights[1] and heights[1] + 3 <= heights[2], (style, seed, heights)


def silhouette_features(mask: np.ndarray) -> np.ndarray:
    """The building's silhouette cropped to its bounding box and resized to 16x16: blind to position and scale."""
    ys, xs = np.nonzero(mask > 0.5)
    crop = Image.fromarray((mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] * 255).astype(np.uint8))
    return np.asarray(crop.resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32).ravel() / 255


def test_styles_differ_in_silhouette():
    for floors, seed in itertools.product(FLOORS, range(10)):
        masks = {style: render_mask(Attributes(style, "red", floors, "day"), seed) > 0.5 for style in STYLES}
        for one, other in itertools.combinations(STYLES, 2):
            assert (masks[one] ^ masks[other]).sum() >= 12, (one, other, floors, seed)
    # a nearest-neighbour classifier on silhouettes alone (no colour, no windows) tells the styles apart
    rng = random.Random(0)
    reference, labels = [], []
    for style, floors, seed in itertools.product(STYLES, FLOORS, range(20)):
        a = Attributes(style, rng.choice(list(COLOURS)), floors, rng.choice(TIMES))
        reference.append(silhouette_features(render_mask(a, seed)))
        labels.append(style)
    reference = np.stack(reference)
    correct = total = 0
    for style, floors, seed in itertools.product(STYLES, FLOORS, range(1000, 1010)):
        features = silhouette_features(render_mask(Attributes(style, "red", floors, "day"), seed))
        nearest = labels[int(((reference - features) ** 2).sum(axis=1).argmin())]
        correct += nearest == style
        total += 1
    assert correct / total >= 0.95


def test_wall_colours_are_nearest_their_own_palette_entry():
    palette = np.array(list(COLOURS.values()), dtype=np.float64)
    distances = np.linalg.norm(palette[:, None] - palette[None], axis=-1)
    assert distances[~np.eye(len(palette), dtype=bool)].min() > 2 * math.sqrt(3) * JITTER
    for colour, style, time_of_day, seed in itertools.product(COLOURS, STYLES, TIMES, range(2)):
        a = Attributes(style, colour, 1 + seed, time_of_day)
        pixels = np.asarray(render(a, seed), dtype=np.float64)[render_mask(a, seed, part="wall") == 1]
        assert len(pixels) >= 10, a
        assert (pixels == pixels[0]).all(), a  # pure wall pixels are exactly the jittered wall colour
        mean = pixels.mean(axis=0)
        assert np.abs(mean - COLOURS[colour]).max() <= JITTER
        assert list(COLOURS)[int(np.linalg.norm(palette - mean, axis=1).argmin())] == colour


def test_render_dataset_writes_what_trilora_reads(tmp_path):
    written = render_dataset(tmp_path / "toy", 12, seed=3, styles=UNSEEN_STYLES, colours=("pink",), size=48)
    assert len(written) == 12 and {a.style for a in written} <= set(UNSEEN_STYLES)
    assert {a.colour for a in written} == {"pink"}
    items = scan(tmp_path / "toy")
    assert [item.image.name for item in items] == [f"{i:05d}.png" for i in range(12)]
    assert [item.caption for item in items] == [caption(a) for a in written]
    assert all(item.caption_problem is None for item in items)
    for item, a in zip(items, written, strict=True):
        assert Image.open(item.image).size == (48, 48) and parse_caption(item.caption) == a
    again = render_dataset(tmp_path / "again", 12, seed=3, styles=UNSEEN_STYLES, colours=("pink",), size=48)
    assert again == written
    for item in items:
        assert (tmp_path / "again" / item.image.name).read_bytes() == item.image.read_bytes()


def test_renders_are_fast():
    rng = random.Random(0)
    attributes = [sample_attributes(rng, STYLES) for _ in range(200)]
    start = time.perf_counter()
    for seed, a in enumerate(attributes):
        render(a, seed)
    assert time.perf_counter() - start < 2.0  # about 0.1 s on a shared 2-core CPU


def test_bad_sizes_and_parts_are_refused():
    a = Attributes("modern", "red", 1, "day")
    with pytest.raises(ValueError, match="at least 16"):
        render(a, 0, size=8)
    with pytest.raises(ValueError, match="unknown part 'sky'"):
        render_mask(a, 0, part="sky")
