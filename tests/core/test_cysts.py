"""Cyst finder on the true masks of synthetic stacks: kept cysts found with their box, others rejected with their reason."""

from __future__ import annotations

import numpy as np
import pytest

from cartocell_bmz.core.cysts import KEPT, REASONS, crop_box, find_cysts
from cartocell_bmz.core.stack_phantoms import box_iou, make_stack


@pytest.fixture(scope="module")
def results():
    found = []
    for seed in range(3):
        stack = make_stack(seed=seed, raw=False)
        cands = find_cysts(stack.labels > 0, spacing=stack.spacing, cells=stack.labels)
        found.append((stack, cands))
    return found


def _best(cands, box):
    return max(cands, key=lambda c: box_iou(c.box, box))


def test_enough_cysts(results):
    assert sum(len(s.cysts) for s, _ in results) >= 20


def test_single_cysts_kept_with_their_box(results):
    singles = [(c, cands) for s, cands in results for c in s.cysts if c.kind == "single"]
    assert len(singles) >= 10
    good = sum(1 for c, cands in singles
               if any(k.kept and box_iou(k.box, c.box) >= 0.9 for k in cands))
    assert good / len(singles) >= 0.95


def test_others_rejected_with_the_right_reason(results):
    others = [(c, cands) for s, cands in results for c in s.cysts if c.kind != "single"]
    assert {c.kind for c, _ in others} == {"touching", "two_lumens", "two_layers", "cut", "debris"}
    right = 0
    for c, cands in others:
        best = _best(cands, c.box)
        right += box_iou(best.box, c.box) >= 0.5 and best.reason == c.expected
    assert right / len(others) >= 0.9


def test_no_false_kept(results):
    for stack, cands in results:
        singles = [c.box for c in stack.cysts if c.kind == "single"]
        for k in cands:
            if k.kept:
                assert max(box_iou(k.box, b) for b in singles) >= 0.9
            assert k.reason == KEPT or k.reason in REASONS


def _shell(r_out=9, r_in=5, pad=3):
    z, y, x = np.ogrid[-10:11, -10:11, -10:11]
    r = np.sqrt(z**2 + y**2 + x**2)
    return np.pad((r <= r_out) & (r >= r_in), pad)


def test_simple_shapes():
    shell = _shell()
    (c,) = find_cysts(shell, spacing=(1, 1, 1), min_volume=10)
    assert c.kept and c.lumens == 1 and c.box == (4, 4, 4, 23, 23, 23)
    assert c.volume_um3 == pytest.approx(shell.sum())
    # solid ball: no lumen; opened shell: no lumen either
    (ball,) = find_cysts(np.pad(_shell(r_in=0), 0), spacing=(1, 1, 1), min_volume=10)
    assert ball.reason == "no lumen"
    opened = shell.copy()
    opened[13, 13, :14] = False
    assert find_cysts(opened, spacing=(1, 1, 1), min_volume=10)[0].reason == "no lumen"
    # anisotropic spacing scales the volume; a cyst at the border is cut; a small one is too small
    assert find_cysts(shell, spacing=(2, 1, 1), min_volume=10)[0].volume_um3 == pytest.approx(2 * shell.sum())
    assert find_cysts(shell[6:], spacing=(1, 1, 1), min_volume=10)[0].reason == "cut by the stack border"
    assert find_cysts(shell, spacing=(1, 1, 1), min_volume=1e6)[0].reason == "too small"


def test_touch_gap_marks_close_regions():
    two = np.concatenate([_shell(pad=1), _shell(pad=1)], axis=2)  # 4 background voxels apart
    assert [c.reason for c in find_cysts(two, spacing=(1, 1, 1), min_volume=10)] == [KEPT, KEPT]
    reasons = [c.reason for c in find_cysts(two, spacing=(1, 1, 1), min_volume=10, touch_gap=6.0)]
    assert reasons == ["touching another cyst"] * 2


def test_bad_input_and_crop_box():
    with pytest.raises(ValueError, match="Z, Y, X"):
        find_cysts(np.zeros((4, 4), bool), spacing=(1, 1, 1))
    with pytest.raises(ValueError, match="differ in shape"):
        find_cysts(np.zeros((4, 4, 4), bool), spacing=(1, 1, 1), cells=np.zeros((4, 4, 5), int))
    assert crop_box((0, 5, 5, 3, 8, 8), (2, 2, 2), (4, 9, 20)) == (slice(0, 4), slice(3, 9), slice(3, 10))


def test_limits_are_cyst_rules_fields():
    from cartocell_bmz.core.cysts import CystRules

    shell = _shell()
    assert find_cysts(shell, spacing=(1, 1, 1), rules=CystRules(min_volume=1e6))[0].reason == "too small"
    # a keyword limit changes the given rules
    assert find_cysts(shell, spacing=(1, 1, 1), rules=CystRules(min_volume=1e6), min_volume=10)[0].reason == KEPT
    with pytest.raises(TypeError, match="unknown limits"):
        find_cysts(shell, spacing=(1, 1, 1), min_volum=10)
