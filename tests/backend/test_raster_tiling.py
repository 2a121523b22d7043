"""Tile plan and blend: every pixel covered, edge tiles shifted inward, weights smooth and positive."""
import numpy as np
import pytest

from lcmsr.raster.tiling import BlockBlender, axis_starts, blend_window, plan_tiles


@pytest.mark.parametrize("width,height", [(300, 200), (257, 256), (1000, 33), (64, 64)])
def test_plan_covers_every_pixel_with_equal_size_aligned_tiles(width, height):
    plan = plan_tiles(width, height, tile=64, overlap=8, align=16)
    cover = np.zeros((height, width), int)
    for t in plan.tiles:
        assert (t.w, t.h) == (plan.tile_w, plan.tile_h)
        assert t.x % 16 == 0 and t.y % 16 == 0
        cover[t.y:t.y + t.read_h, t.x:t.x + t.read_w] += 1
        # a tile reaches past the raster by less than the alignment, never more
        assert t.x + t.w - width < 16 and t.y + t.h - height < 16
    assert cover.min() >= 1


def test_edge_tiles_are_shifted_inward_not_shrunk():
    starts = axis_starts(300, 64, 48, 16)
    assert starts[:-1] == list(range(0, 300 - 64, 48))
    assert starts[-1] == 240 and starts[-1] + 64 >= 300  # 300 - 64 = 236, rounded up to the alignment


def test_small_raster_is_one_padded_tile():
    plan = plan_tiles(10, 5, tile=256, overlap=32, align=16)
    assert len(plan.tiles) == 1
    t = plan.tiles[0]
    assert (t.w, t.h, t.read_w, t.read_h) == (16, 16, 10, 5)
    assert not (t.ramp_left or t.ramp_right or t.ramp_top or t.ramp_bottom)


def test_overlap_too_large_for_tile_is_refused():
    with pytest.raises(ValueError, match="overlap"):
        plan_tiles(500, 500, tile=32, overlap=16, align=1)


def test_valid_tile_and_overlap_that_rounding_pushes_apart_grow_the_tile():
    """tile 32 / overlap 8 are valid; aligned to 16 the overlap becomes 16 = half the tile.
    The tile grows to keep the blend (QGIS allows tiles this small)."""
    plan = plan_tiles(500, 500, tile=32, overlap=8, align=16)
    assert plan.overlap == 16 and plan.tile_w == 48 and plan.tile_h == 48
    plan = plan_tiles(500, 500, tile=16, overlap=4, align=16)
    assert plan.overlap == 16 and plan.tile_w == 48


def test_blend_window_is_positive_smooth_and_flat_on_the_raster_border():
    plan = plan_tiles(200, 200, tile=64, overlap=16, align=1)
    inner = [t for t in plan.tiles if t.ramp_left and t.ramp_right and t.ramp_top and t.ramp_bottom][0]
    w = blend_window(inner, 32, 2)
    assert w.min() > 0 and w.max() == pytest.approx(1.0)
    assert np.abs(np.diff(w, axis=1)).max() < 0.1  # no jumps
    corner = plan.tiles[0]
    wc = blend_window(corner, 32, 2)
    assert wc[0, 0] == 1.0 and wc[-1, -1] < 0.01  # flat at the raster edge, ramped towards the neighbour


# Exact reassembly, spilling and bounded memory: tests/backend/test_perf_paths.py.
def test_blender_marks_uncovered_skipped_tiles_invalid_and_rejects_disorder():
    plan = plan_tiles(64, 32, tile=32, overlap=0, align=1)
    blender = BlockBlender(plan, 1, 2, block=64)
    with pytest.raises(ValueError, match="out of order"):
        blender.add(plan.tiles[1], None, np.zeros((1, 32, 32), bool))
    blocks = blender.add(plan.tiles[0], np.ones((1, 64, 64), np.float32), np.ones((1, 32, 32), bool))
    blocks += blender.add(plan.tiles[1], None, np.zeros((1, 32, 32), bool))
    assert [(b.x, b.y) for b in blocks] == [(0, 0), (64, 0)]
    assert blocks[0].valid.all() and (blocks[0].value == 1).all()
    assert not blocks[1].valid.any() and (blocks[1].value == 0).all()  # a skipped tile: no weight, nodata
