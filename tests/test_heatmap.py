"""render_volume against a per-pixel reference written from docs/architecture.md, Heatmaps (pyskl's formulas)."""

from __future__ import annotations

import numpy as np
import pytest

from stages.render.heatmap import render_volume
from stores.coco import LIMBS
from tests.support import reference_heatmaps

f32 = np.float32
TOL = 1e-5


def check(kp, score, shape, rtol=0.0, **kw) -> np.ndarray:
    """render_volume == reference within TOL, and float16/uint8 outputs == numpy's cast of float32."""
    ours = render_volume(kp, score, shape, **kw)
    ref = reference_heatmaps(kp, score, shape, **kw)
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=TOL)
    np.testing.assert_array_equal(render_volume(kp, score, shape, dtype=np.float16, **kw), ours.astype(np.float16))
    as_u8 = np.clip(np.rint(ours * f32(255)), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(render_volume(kp, score, shape, dtype=np.uint8, **kw), as_u8)
    return ours


def one_point(x: float, y: float, c: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    return np.array([[[[x, y]]]], f32), np.array([[[c]]], f32)


def random_case(rng, m_len, t_len, v_len, shape, margin=4.0):
    h, w = shape
    size = (m_len, t_len, v_len)
    kp = np.stack([rng.uniform(-margin, w + margin, size), rng.uniform(-margin, h + margin, size)], -1).astype(f32)
    score = rng.uniform(0, 1, (m_len, t_len, v_len)).astype(f32)
    score[rng.uniform(size=score.shape) < 0.15] = 0
    return kp, score


@pytest.mark.parametrize("use_score", [True, False])
@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(16, 16), (13, 21)])
def test_random_joints(sigma, shape, use_score):
    kp, score = random_case(np.random.default_rng(1), 3, 2, 5, shape)
    check(kp, score, shape, sigma=sigma, use_score=use_score)


@pytest.mark.parametrize("use_score", [True, False])
@pytest.mark.parametrize("sigma", [0.6, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(16, 16), (21, 13), (9, 5)])  # (9, 5): narrower than a kernel block
def test_random_limbs(sigma, shape, use_score):
    kp, score = random_case(np.random.default_rng(2), 3, 2, 5, shape)
    limbs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 3), (2, 2)]
    check(kp, score, shape, sigma=sigma, limbs=limbs, use_score=use_score)


def test_coco_limbs_and_joints_t1():
    rng = np.random.default_rng(3)
    kp = (rng.normal(0, 5, (2, 1, 17, 2)) + [[[[8, 10]]], [[[15, 12]]]]).astype(f32)
    score = rng.uniform(0.2, 1, (2, 1, 17)).astype(f32)
    assert check(kp, score, (24, 24), limbs=LIMBS).shape == (len(LIMBS), 1, 24, 24)
    assert check(kp, score, (24, 24)).shape == (17, 1, 24, 24)


def test_overlapping_persons_take_max():
    kp = np.array([[[[5.0, 5.0]]], [[[5.5, 5.2]]], [[[6.0, 4.0]]]], f32)
    score = np.array([[[0.5]], [[0.9]], [[0.3]]], f32)
    out = check(kp, score, (12, 12))
    singles = [render_volume(kp[m : m + 1], score[m : m + 1], (12, 12)) for m in range(3)]
    np.testing.assert_array_equal(out, np.maximum.reduce(singles))
    assert out.max() == pytest.approx(0.9 * np.exp(-(0.5**2 + 0.2**2) / 0.72), abs=TOL)


def test_score_cut_at_eps():
    cut = f32(1e-3)
    scores = [np.nextafter(cut, f32(0)), cut, np.nextafter(cut, f32(1)), f32(0.002)]
    kp = np.tile(np.array([4.0, 4.0], f32), (1, 1, 4, 1))
    out = check(kp, np.array([[scores]], f32), (9, 9))
    assert out[0].max() == 0 and out[1].max() == pytest.approx(cut) and out[3].max() == pytest.approx(0.002)
    # A limb uses min(c_a, c_b) against the cut.
    limbs = [(0, 1), (1, 2), (0, 3)]
    kp[0, 0, :, 0] = [2.0, 6.0, 3.0, 5.0]
    out = check(kp, np.array([[scores]], f32), (9, 9), limbs=limbs)
    assert out[0].max() == 0 and out[1].max() > 0 and out[2].max() == 0


def test_use_score_false_draws_zero_padded_person():
    kp = np.zeros((2, 1, 3, 2), f32)
    kp[0, 0] = [[5, 5], [3, 7], [8, 2]]
    score = np.zeros((2, 1, 3), f32)
    score[0, 0] = [0.8, 0.0, 1e-4]
    out = check(kp, score, (10, 10), use_score=False)
    assert (out[:, 0, 0, 0] == 1).all()  # padded person at (0, 0), score 1
    assert out[1, 0, 7, 3] == 1 and out[2, 0, 2, 8] == 1
    assert render_volume(kp, score, (10, 10))[:, 0, 0, 0].max() == 0
    check(kp, score, (10, 10), use_score=False, limbs=[(0, 1), (1, 2)])


@pytest.mark.parametrize(
    ("x", "y", "lit"),
    [
        (-2.5, 4.0, True),  # int(-0.7) = 0: column 0 still lit
        (-3.0, 4.0, False),  # int(-1.2) + 1 = 0: empty window
        (4.0, -2.7, True),
        (4.0, -2.9, False),
        (13.5, 4.0, True),  # int(11.7) = 11 < W
        (14.0, 4.0, False),  # int(12.2) = 12 = W: empty
        (4.0, 8.9, True),
        (0.0, 0.0, True),
        (11.0, 8.0, True),  # last pixel
        (5.0, 3.0, True),
    ],
)
@pytest.mark.parametrize("sigma", [0.6, 1.0])
def test_points_at_and_beyond_borders(x, y, lit, sigma):
    kp, score = one_point(x, y)
    out = check(kp, score, (9, 12), sigma=sigma)
    if sigma == 0.6:
        assert (out.max() > 0) == lit
    if (x, y, sigma) == (-2.5, 4.0, 0.6):
        assert out[0, 0, :, 1:].max() == 0 and out[0, 0, 4, 0] == pytest.approx(np.exp(-6.25 / 0.72), rel=1e-6)
    if (x, y, sigma) == (5.0, 3.0, 0.6):  # lopsided window: columns 3..6, rows 1..4
        assert np.array_equal(np.nonzero(out[0, 0].max(0))[0], [3, 4, 5, 6])
        assert np.array_equal(np.nonzero(out[0, 0].max(1))[0], [1, 2, 3, 4])


def test_limbs_outside_and_across_the_image():
    kp = np.array([[[[-6.0, -5.0], [30.0, 20.0], [-9.0, 3.0], [-4.0, 5.0], [5.0, -3.5], [7.0, -2.0]]]], f32)
    score = np.full((1, 1, 6), 0.7, f32)
    out = check(kp, score, (12, 17), sigma=1.0, limbs=[(0, 1), (2, 3), (4, 5), (1, 0)])
    assert out[0].max() > 0.69 and out[1].max() == 0 and out[2].max() > 0
    np.testing.assert_allclose(out[0], out[3], rtol=0, atol=TOL)  # a-b and b-a agree up to rounding


def test_degenerate_limbs():
    # |ab|^2 < 1 is drawn as a joint at a with c_a; |ab|^2 == 1 is a real segment.
    kp = np.array([[[[4.0, 4.0], [4.6, 4.7], [5.0, 4.0]]]], f32)
    score = np.array([[[0.9, 0.5, 0.5]]], f32)
    limbs = [(0, 1), (1, 0), (0, 2)]
    out_limbs = check(kp, score, (9, 9), limbs=limbs)
    joints = render_volume(kp, score, (9, 9))
    np.testing.assert_array_equal(out_limbs[0], joints[0])
    np.testing.assert_array_equal(out_limbs[1], joints[1])
    assert out_limbs[2, 0, 4, 4] == out_limbs[2, 0, 4, 5] == pytest.approx(0.5)
    # Degenerate but min(c_a, c_b) below the cut: nothing.
    score[0, 0, 1] = 1e-4
    assert check(kp, score, (9, 9), limbs=limbs)[:2].max() == 0


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize("c", [3.0, 7e4])
def test_scores_above_one(c):
    # pyskl does not clip: uint8 saturates at 255, float16 overflows to inf above 65504.
    kp, score = one_point(3.0, 3.0, c)
    out = check(kp, score, (7, 7), rtol=1e-6, sigma=2.5)  # exp's last-ulp difference, scaled by c
    assert out.max() == c and render_volume(kp, score, (7, 7), dtype=np.uint8).max() == 255
    assert np.isinf(render_volume(kp, score, (7, 7), sigma=2.5, dtype=np.float16)).any() == (c > 65504)


def test_empty_and_dtypes():
    kp, score = np.zeros((0, 4, 17, 2), f32), np.zeros((0, 4, 17), f32)
    assert render_volume(kp, score, (5, 6), dtype=np.float16).shape == (17, 4, 5, 6)
    assert render_volume(kp, score, (5, 6), limbs=[]).shape == (0, 4, 5, 6)
    kp64, score64 = one_point(2.0, 2.0)
    out = render_volume(kp64.astype(np.float64), score64.astype(np.float64), (5, 5))
    np.testing.assert_array_equal(out, render_volume(kp64, score64, (5, 5)))


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"keypoint": np.zeros((1, 2, 3), f32)}, "keypoint"),
        ({"score": np.zeros((1, 2, 4), f32)}, "score"),
        ({"keypoint": np.full((1, 2, 3, 2), np.nan, f32)}, "finite"),
        ({"score": np.full((1, 2, 3), np.inf, f32)}, "finite"),
        ({"img_shape": (0, 5)}, "img_shape"),
        ({"sigma": 0.0}, "sigma"),
        ({"dtype": np.int16}, "dtype"),
        ({"limbs": [(0, 3)]}, "limbs"),
        ({"limbs": [(-1, 0)]}, "limbs"),
        ({"limbs": [(0, 1, 2)]}, "pairs"),
        ({"keypoint": np.zeros((1, 2, 3, 2), complex)}, "real"),
        ({"img_shape": (4, 4, 1)}, "img_shape"),
    ],
)
def test_invalid_inputs(kw, match):
    args = {"keypoint": np.zeros((1, 2, 3, 2), f32), "score": np.ones((1, 2, 3), f32), "img_shape": (4, 4)}
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        render_volume(args.pop("keypoint"), args.pop("score"), args.pop("img_shape"), **args)


def test_window_bounds_are_float64_as_in_pyskl():
    """x = 44.8 (float32 44.799999) - 1.8 is 42.99999 in float64 (pyskl on NumPy 1) but rounds to 43.0 in
    float32: column 42 (value exp(-7.84 / 0.72) ~ 1.9e-5) must be drawn."""
    kp, score = one_point(44.8, 5.0)
    out = check(kp, score, (10, 64))
    assert out[0, 0, 5, 42] > 1e-5 and out[0, 0, 5, 41] == 0
    limb = check(np.array([[[[44.8, 5.0], [50.0, 5.0]]]], f32), np.ones((1, 1, 2), f32), (10, 64), limbs=[(0, 1)])
    assert limb[0, 0, 5, 42] > 1e-5


def test_stored_layout_and_reused_buffer():
    """layout="tkhw" is the [K, T, H, W] volume with K and T exchanged; ``out`` is zeroed and reused."""
    rng = np.random.default_rng(7)
    kp = rng.uniform(-5, 37, (2, 6, 17, 2)).astype(f32)
    score = rng.uniform(0, 1, (2, 6, 17)).astype(f32)
    for limbs in (None, LIMBS):
        ref = render_volume(kp, score, (32, 32), limbs=limbs, dtype=np.uint8)
        buf = np.full((6, len(ref), 32, 32), 7, np.uint8)
        out = render_volume(kp, score, (32, 32), limbs=limbs, dtype=np.uint8, layout="tkhw", out=buf)
        assert out is buf and np.array_equal(out, ref.transpose(1, 0, 2, 3))
    with pytest.raises(ValueError, match="out must be"):
        render_volume(kp, score, (32, 32), out=np.zeros((17, 6, 32, 31), f32))


def test_long_limbs_across_the_frame():
    """Limbs spanning the whole frame (the capsule walk must cover every lit pixel of the box)."""
    rng = np.random.default_rng(3)
    kp = rng.uniform(-10, 74, (1, 4, 17, 2)).astype(f32)
    check(kp, rng.uniform(0.2, 1, (1, 4, 17)).astype(f32), (64, 64), limbs=LIMBS, sigma=1.5)


# --- the compiled kernel: built from this source, and never needed by commands that do not render -----------

@pytest.mark.parametrize("module", ["stages.render._heatmap", "stages.train._augment", "stores._frames",
                                    "models._maxpool"])
def test_every_kernel_is_built_from_the_source_beside_it(module: str) -> None:
    import importlib
    from pathlib import Path

    from pipeline.native import HEADER, digest

    kernel = importlib.import_module(module)
    source = Path(kernel.__file__).with_name(module.rsplit(".", 1)[1] + ".c")
    assert kernel.SOURCE_SHA256 == digest(source) != digest(HEADER)


def test_the_kernel_checks_its_arguments_itself() -> None:
    """A direct call with sizes that overflow or do not match the buffers is an error, not a wild write."""
    from stages.render import _heatmap

    out, kp, sc = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 1, 2), np.float32), np.ones((1, 1, 1), np.float32)
    _heatmap.render(out, kp, sc, None, 1, 1, 1, 4, 4, 0.6, 0, 0)  # fits
    for args, what in [((1, 1, 1, 8, 8, 0.6), "expected"), ((1, 1, 1, 4, 4, float("nan")), "sigma"),
                       ((2**40, 2**40, 1, 4, 4, 0.6), "too large")]:
        with pytest.raises(ValueError, match=what):
            _heatmap.render(out, kp, sc, None, *args, 0, 0)


@pytest.mark.slow
def test_without_the_kernel_only_rendering_fails_in_one_line(synth_pkl, tmp_path) -> None:
    import subprocess
    import sys

    from tests.support import REPO

    def skel_without_kernel(*args: str) -> subprocess.CompletedProcess:
        code = "import sys; sys.modules['stages.render._heatmap'] = None; from cli import app; app()"
        return subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "COLUMNS": "300"})

    w = str(tmp_path / "w")
    for args in (["--help"], ["import", str(synth_pkl), "-w", w, "-j", "0", "-q"], ["status", "-w", w],
                 ["verify", "-w", w]):
        assert skel_without_kernel(*args).returncode == 0, args
    render = skel_without_kernel("render", "-w", w, "-j", "0", "-q")
    errors = [ln for ln in render.stderr.splitlines() if ln.strip()]
    assert render.returncode == 1 and "Traceback" not in render.stderr
    assert len(errors) == 1 and "heatmap kernel is not built" in errors[0] and "pip install -e ." in errors[0]
