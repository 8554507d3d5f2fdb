"""The layout testbed's world and its reader (``embedded/scenes.py``): what the benchmark's layout numbers mean."""

from __future__ import annotations

import torch

from comfyui_magcache.embedded import scenes as sc


def _draw(seed: int, scenes: list[sc.Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    return sc.render(scenes, torch.Generator().manual_seed(seed))


def test_the_reader_finds_every_drawn_object_and_its_centre():
    scenes = sc.random_scenes(32, torch.Generator().manual_seed(0))
    images, centres = _draw(1, scenes)
    reading = sc.read_layout(images, scenes)
    assert float(reading.score.min()) == 1.0
    for i, scene in enumerate(scenes):
        for k in range(len(scene.objects)):
            # Anti-aliased edges and the triangle's shape (its centroid is off its drawn centre, in proportion to
            # the radius) put the colour's centroid within 0.3 radius of the centre.
            assert float((reading.centre[i, k] - centres[i, k]).norm()) < 0.3 * sc.RADIUS


def test_the_noise_places_the_objects_and_the_prompt_does_not():
    scenes = sc.random_scenes(16, torch.Generator().manual_seed(0))
    a, _ = _draw(1, scenes)
    b, _ = _draw(2, scenes)
    again, _ = _draw(1, scenes)
    assert torch.equal(a, again)  # a pure function of the scenes and the generator
    moved = sc.displacement(sc.read_layout(a, scenes), sc.read_layout(b, scenes))
    assert float(moved) > 5.0
    assert float(sc.displacement(sc.read_layout(a, scenes), sc.read_layout(a, scenes))) == 0.0


def test_a_lost_or_scattered_object_is_not_found_and_counts_half_the_canvas():
    scene = sc.Scene(((1, 0),), 0)  # a red disc
    images, _ = _draw(3, [scene])
    reference = sc.read_layout(images, [scene])
    gone = images.clone()
    red = (gone - torch.tensor(sc.COLOURS["red"]).view(1, 3, 1, 1)).norm(dim=1, keepdim=True) < sc.COLOUR_TOLERANCE
    gone = torch.where(red, torch.full_like(gone, 0.2), gone)  # painted over
    lost = sc.read_layout(gone, [scene])
    assert not bool(lost.found[0, 0]) and float(lost.score[0]) == 0.0
    assert float(sc.displacement(reference, lost)) == sc.CANVAS / 2
    scattered = torch.full_like(images, 0.2)
    scattered[0, :, ::4, ::4] = torch.tensor(sc.COLOURS["red"]).view(3, 1, 1)  # red dots all over the canvas
    assert not bool(sc.read_layout(scattered, [scene]).found[0, 0])


def test_colour_scattered_in_patches_is_not_one_object_even_with_an_objects_area():
    """What an untrained layout model draws: the prompted colour in token-sized patches over the canvas."""
    scene = sc.Scene(((0, 0),), 0)  # a red square
    images, _ = _draw(3, [scene])
    patches = torch.full_like(images, 0.64)
    for y, x in [(0, 4), (4, 24), (8, 12), (12, 28), (16, 0), (20, 16), (24, 8), (28, 20), (28, 0), (4, 12)]:
        patches[0, :, y:y + 4, x:x + 4] = torch.tensor(sc.COLOURS["red"]).view(3, 1)[:, :, None]
    red = (patches[0] == torch.tensor(sc.COLOURS["red"]).view(3, 1, 1)).all(0)
    assert float(red.sum()) >= 150  # more than any drawn object covers
    assert not bool(sc.read_layout(patches, [scene]).found[0, 0])


def test_the_codec_is_exact_and_leaves_four_channels_empty():
    codec = sc.fit_codec(torch.Generator().manual_seed(0), pictures=64)
    scenes = sc.random_scenes(4, torch.Generator().manual_seed(5))
    images, _ = _draw(6, scenes)
    latent = codec.encode(images)
    assert latent.shape == (4, sc.CHANNELS, 1, sc.LATENT_SIDE, sc.LATENT_SIDE)
    assert torch.allclose(codec.decode(latent), images, atol=1e-5)
    assert float(latent[:, sc.SIGNAL :].abs().max()) == 0.0
    assert codec.conditioning(scenes).shape == (4, sc.PROMPT_TOKENS, sc.TEXT_DIM)
