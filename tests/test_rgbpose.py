"""RGBPose-Conv3D: the two-pathway model, aligned RGB/pose sampling and the RGB frames stage.

Specification: docs/architecture.md, Models.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from inference.clip_spec import ClipSpec
from inference.rgbpose_sampling import FULL, Clip, apply_clip, clip_indices, eval_clips, train_clip, view
from models import build_model
from models.flops import count_params
from models.rgbpose import build_rgbpose, fuse_scores, loss
from pipeline.cluster import Cluster
from pipeline.errors import SkelError
from pipeline.runner import make_plan, run_stage
from pipeline.workdir import write_manifest
from stages.extract.video import FrameSelection
from stages.frames.params import FramesParams
from stages.frames.stage import FramesStage, crop_resize, read_frames
from stages.render.stage import RenderParams, RenderStage
from stores.coco import KP_FLIP
from stores.frames import GROUP, FrameStore
from stores.triplets import Skeleton
from stores.volumes import VolumeStore
from tests.support import REPO, extract_output, resnet3d_counts

pytestmark = pytest.mark.usefixtures("torch_threads")

SMALL = dict(rgb_base_channels=8, rgb_stage_blocks=(1, 1, 1, 1), pose_base_channels=4, pose_stage_blocks=(1, 1, 1))
NTU = "mmaction2_ntu_S001C001P001R001A001_rgb.avi"


def small_model(lateral: bool = True, num_classes: int = 5):
    torch.manual_seed(0)
    return build_rgbpose(num_classes=num_classes, lateral=lateral, **SMALL)


def small_inputs(n: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, 8, 64, 64, generator=g), torch.rand(n, 17, 32, 16, 16, generator=g)


# ---------------------------------------------------------------- model


def test_paper_config_size_shapes_and_pyskl_keys():
    with torch.device("meta"):  # 36M parameters: counted, never allocated
        model = build_model("rgbpose", num_classes=60)
        rgb, pose = model.backbone(torch.empty(1, 3, 8, 224, 224), torch.empty(1, 17, 32, 56, 56))
        logits = model({"imgs": torch.empty(2, 3, 8, 224, 224), "heatmap_imgs": torch.empty(2, 17, 32, 56, 56)})
    # Independent count from pyskl's rgbpose_conv3d config (docs/architecture.md, Models; "≈36M" there):
    # RGB ResNet3d-50 taking 128 / 256 lateral channels into stages 3 / 4, pose SlowOnly taking 32 / 64 into
    # stages 2 / 3, 7x1x1 lateral convs pose -> RGB (no BN), 7x1x1 deconvs + BN RGB -> pose, two linear heads.
    rgb_path = resnet3d_counts(3, 64, (3, 4, 6, 3), (0, 0, 1, 1), (1, 2, 2, 2), (1, 1, 1, 1), extra=(0, 0, 128, 256))[0]
    pose_path = resnet3d_counts(17, 32, (4, 6, 3), (0, 1, 1), (2, 2, 2), (1, 1, 1), extra=(0, 32, 64))[0]
    pose_path += 7 * (512 * 32 + 1024 * 64) + 2 * (32 + 64)
    rgb_path += 7 * (128 * 128 + 256 * 256)
    assert count_params(model.backbone.pose_path) == pose_path
    assert count_params(model) == rgb_path + pose_path + (2048 + 512) * 60 + 2 * 60
    assert tuple(rgb.shape) == (1, 2048, 8, 7, 7) and tuple(pose.shape) == (1, 512, 32, 7, 7)
    assert [tuple(x.shape) for x in logits] == [(2, 60), (2, 60)]
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["backbone.rgb_path.conv1.conv.weight"] == (64, 3, 1, 7, 7)
    assert shapes["backbone.rgb_path.layer2_lateral.conv.weight"] == (128, 128, 7, 1, 1)
    assert shapes["backbone.rgb_path.layer3_lateral.conv.weight"] == (256, 256, 7, 1, 1)
    assert shapes["backbone.pose_path.layer1_lateral.conv.weight"] == (512, 32, 7, 1, 1)  # ConvTranspose3d
    assert shapes["backbone.pose_path.layer2_lateral.bn.running_mean"] == (64,)
    assert shapes["backbone.rgb_path.layer3.0.conv1.conv.weight"] == (256, 512 + 128, 3, 1, 1)
    assert shapes["backbone.pose_path.layer2.0.conv1.conv.weight"] == (64, 128 + 32, 3, 1, 1)
    assert shapes["cls_head.fc_rgb.weight"] == (60, 2048) and shapes["cls_head.fc_pose.weight"] == (60, 512)
    assert "backbone.rgb_path.layer4_lateral.conv.weight" not in shapes


def test_small_model_runs_dict_tuple_and_multi_clip():
    model = small_model().eval()
    imgs, heat = small_inputs()
    with torch.no_grad():
        rgb, pose = model((imgs, heat))
        rgb2, pose2 = model({"imgs": imgs, "heatmap_imgs": heat})
        clips = model((imgs[:, None].expand(2, 3, *imgs.shape[1:]), heat[:, None].expand(2, 3, *heat.shape[1:])))
    assert rgb.shape == pose.shape == (2, 5)
    assert torch.equal(rgb, rgb2) and torch.equal(pose, pose2)
    torch.testing.assert_close(clips[0], rgb, atol=1e-5, rtol=1e-4)  # 3 identical clips average to one
    proba = model.predict_proba((imgs, heat))
    torch.testing.assert_close(proba, fuse_scores(rgb, pose), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(proba.sum(-1), torch.ones(2))


@pytest.mark.parametrize("lateral", [True, False])
def test_laterals_carry_each_modality_into_the_other_head(lateral):
    model = small_model(lateral=lateral).eval()
    imgs, heat = small_inputs()
    with torch.no_grad():
        rgb, pose = model((imgs, heat))
        _, pose_after_rgb_change = model((imgs + 1.0, heat))
        rgb_after_pose_change, _ = model((imgs, heat.flip(-1)))
    assert torch.equal(pose, pose_after_rgb_change) is not lateral  # RGB -> pose
    assert torch.equal(rgb, rgb_after_pose_change) is not lateral  # pose -> RGB


def test_both_losses_train_both_pathways():
    model = small_model().train()
    labels = torch.tensor([1, 3])
    out = model(small_inputs())
    parts = loss(out, labels, weights=(2.0, 0.5))
    torch.testing.assert_close(parts.total, 2.0 * parts.rgb + 0.5 * parts.pose)
    for term in ("rgb", "pose"):
        model.zero_grad()
        getattr(parts, term).backward(retain_graph=True)
        for path in ("rgb_path", "pose_path"):
            grad = getattr(model.backbone, path).conv1.conv.weight.grad
            assert grad is not None and grad.abs().sum() > 0, f"{term} loss does not reach {path}"


def test_fuse_scores_weights():
    rgb, pose = torch.randn(4, 6), torch.randn(4, 6)
    torch.testing.assert_close(fuse_scores(rgb, pose), (rgb.softmax(-1) + pose.softmax(-1)) / 2)
    torch.testing.assert_close(fuse_scores(rgb, pose, (1.0, 0.0)), rgb.softmax(-1))


# ---------------------------------------------------------------- aligned sampling


@pytest.mark.parametrize("n_frames", [5, 31, 32, 100, 300])
def test_rgb_frames_sit_at_the_centre_of_their_pose_groups(n_frames):
    spec = ClipSpec()
    for phase in (0.0, 0.37, 0.999):
        rgb, pose = clip_indices(n_frames, spec, phase)
        assert rgb.shape == (8,) and pose.shape == (32,)
        assert rgb.min() >= 0 and max(rgb.max(), pose.max()) < n_frames
        assert np.all(np.diff(pose) >= 0) and np.all(np.diff(rgb) >= 0)
        groups = pose.reshape(8, 4)
        assert np.all(groups[:, 1] <= rgb) and np.all(rgb <= groups[:, 2])
        if n_frames >= 32:  # one pose frame per segment: the clip spans the whole video
            assert pose[0] < n_frames / 32 and pose[-1] >= n_frames * 31 / 32 - 1
    clips = eval_clips(100, spec, 4)
    assert len({c.pose.tobytes() for c in clips}) == 4 and all(c.box == FULL and not c.flip for c in clips)


def _dot(shape_hw: tuple[int, int], u: float, v: float) -> np.ndarray:
    """A smooth bump centred at normalised (u, v) on a pixel grid (pixel j covers [j, j+1) / W)."""
    h, w = shape_hw
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-(((xx + 0.5) / w - u) ** 2 + ((yy + 0.5) / h - v) ** 2) / (2 * 0.04**2)).astype(np.float32)


def _peak(img: np.ndarray) -> np.ndarray:
    """Normalised (u, v) of an image's centre of mass."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    m = img.sum()
    return np.array([((xx + 0.5) * img).sum() / w / m, ((yy + 0.5) * img).sum() / h / m])


def test_one_crop_and_flip_for_both_modalities():
    spec = ClipSpec(rgb_size=64, pose_size=16)
    rng = np.random.RandomState(3)
    u, v = 0.55, 0.45
    dot_rgb = _dot((96, 96), u, v)  # stored RGB and heatmaps at different resolutions
    rgb = np.repeat((dot_rgb * 255).astype(np.uint8)[None, :, :, None], 8, 0).repeat(3, -1)
    heat = np.zeros((17, 32, 24, 24), np.float32)
    heat[1] = _dot((24, 24), u, v)  # l_eye only
    flips = set()
    for _ in range(8):
        clip = train_clip(100, spec, rng)
        assert clip.box != FULL and 0 <= clip.box[0] < clip.box[2] <= 1 and 0 <= clip.box[1] < clip.box[3] <= 1
        imgs, out = apply_clip(rgb, heat, clip, spec, KP_FLIP)
        assert imgs.shape == (3, 8, 64, 64) and out.shape == (17, 32, 16, 16)
        channel = 2 if clip.flip else 1  # a flip moves the left eye's heatmap to the right eye's channel
        assert out[channel].abs().sum() > 0 and out[3 - channel].abs().sum() == 0
        p_rgb = _peak(imgs[0, 0].numpy() - imgs[0, 0].numpy().min())
        p_pose = _peak(out[channel, 0].numpy())
        assert np.abs(p_rgb - p_pose).max() < 0.03, (clip, p_rgb, p_pose)
        flips.add(clip.flip)
    assert flips == {True, False}


def test_full_view_is_identity_and_mirror_is_exact():
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(view(x, FULL, False, 8), x)
    torch.testing.assert_close(view(x, FULL, True, 8), x.flip(-1))
    clip = Clip(np.arange(8), np.arange(32), FULL, True)
    heat = np.random.RandomState(0).rand(17, 32, 8, 8).astype(np.float32)
    _, out = apply_clip(np.zeros((8, 8, 8, 3), np.uint8), heat, clip, ClipSpec(rgb_size=8, pose_size=8), KP_FLIP)
    torch.testing.assert_close(out, torch.from_numpy(heat).flip(-1)[KP_FLIP])


# ---------------------------------------------------------------- frames stage (real video)


def _skeleton(x: tuple[float, float], y: tuple[float, float], t: int = 10) -> Skeleton:
    rng = np.random.RandomState(0)
    kp = np.stack([rng.uniform(*x, (1, t, 17)), rng.uniform(*y, (1, t, 17))], -1).astype(np.float32)
    return Skeleton(kp, np.full((1, t, 17), 0.9, np.float32))


@pytest.fixture(scope="module")
def frames_workdir(shared, tmp_path_factory):
    """A workdir with triplets as extract writes them (10 frames each) and their render output."""
    wd = tmp_path_factory.mktemp("rgbpose")
    video = shared / "media" / NTU
    if not video.is_file():
        pytest.fail(f"missing test video {video}")
    corrupt = wd / "corrupt.avi"
    corrupt.write_bytes(np.random.RandomState(0).bytes(50_000))
    samples = {  # sample id -> (source, skeleton)
        "ntu_centre": (str(video), _skeleton((860, 1060), (250, 850))),
        "ntu_edge": (str(video), _skeleton((1780, 1915), (900, 1075))),  # the crop leaves the image
        "corrupt": (str(corrupt), _skeleton((860, 1060), (250, 850))),
        "missing": (str(wd / "gone.avi"), _skeleton((860, 1060), (250, 850))),
        "imported": ("ntu.pkl#4", _skeleton((860, 1060), (250, 850))),
    }
    extract_output(wd, {sid: ({"label": i, "split": "train", "img_h": 1080, "img_w": 1920, "fps": 30.0,
                               "source": source}, skel) for i, (sid, (source, skel)) in enumerate(samples.items())})
    with Cluster(workers=0) as cluster:
        run_stage(RenderStage(), wd, RenderParams(size=32), cluster, quiet=True)
    return wd, video


def _reference(video, t: int, box, size: int) -> np.ndarray:
    """Frame t the slow obvious way: zero-pad, crop, cv2.resize (bilinear)."""
    cap = cv2.VideoCapture(str(video))
    for _ in range(t + 1):
        ok, bgr = cap.read()
        assert ok
    cap.release()
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    x0, y0, x1, y1 = box
    pad = max(0, -x0, -y0, x1 - rgb.shape[1], y1 - rgb.shape[0])
    padded = np.pad(rgb, ((pad, pad), (pad, pad), (0, 0)))
    crop = padded[y0 + pad : y1 + pad, x0 + pad : x1 + pad]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def test_frames_stage_on_real_video_with_errors_and_resume(frames_workdir):
    wd, video = frames_workdir
    params = FramesParams(size=48, samples_per_shard=2)
    with Cluster(workers=0) as cluster:
        out = run_stage(FramesStage(), wd, params, cluster, quiet=True)
    summary = json.loads((out / "manifest.json").read_text())["summary"]
    assert summary["samples"] == 2 and summary["errors"] == 3

    errors = {r["sample_id"]: r["message"] for r in pq.read_table(out / "errors.parquet").to_pylist()}
    assert "not a readable video" in errors["corrupt"]
    assert "file not found" in errors["missing"] or "not a file" in errors["missing"]
    assert "is not a file" in errors["imported"]

    frames, volumes = FrameStore(out), VolumeStore(next((wd / "render").iterdir()))
    index = {r["sample_id"]: r for r in frames.index.to_pylist()}
    assert set(index) == {"ntu_centre", "ntu_edge"}
    for sid in index:
        name = index[sid]["array"]
        arr = frames.array(name)
        vattrs = volumes.meta(sid)
        assert arr.shape == (10, 48, 48, 3) and arr.dtype == np.uint8 and index[sid]["n_frames"] == 10
        assert arr.attrs["frames"] == vattrs["frames"] and arr.attrs["crop_box"] == vattrs["crop_box"]
        box = vattrs["crop_box"]
        for t in (0, 9):
            diff = np.abs(frames.read(name, [t])[0].astype(int) - _reference(video, t, box, 48).astype(int))
            assert diff.mean() < 1.5, (sid, t, diff.mean())
        np.testing.assert_array_equal(frames.read(name, [9, 0, 9]), frames.read(name)[[9, 0, 9]])
    edge_box = volumes.meta("ntu_edge")["crop_box"]
    assert edge_box[2] > 1920 and edge_box[3] > 1080
    edge = frames.read(index["ntu_edge"]["array"])
    beyond = int(48 * (1920 - edge_box[0]) / (edge_box[2] - edge_box[0])) + 1  # first column right of the image
    assert edge[:, :, beyond:].max() == 0 and edge[:, :, : beyond - 2].max() > 0
    assert len(list((out / GROUP).glob("*/c/*"))) == 2  # one shard file per sample


    # Second run: cache hit. A killed run (manifest back to running, one shard marker lost) redoes one shard.
    assert make_plan(FramesStage(), wd, params).cached
    manifest = json.loads((out / "manifest.json").read_text())
    write_manifest(out, {**manifest, "state": "running"})
    (out / "_shards" / "00001.json").unlink()
    with Cluster(workers=0) as cluster:
        assert run_stage(FramesStage(), wd, params, cluster, quiet=True) == out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete" and manifest["shards"] == {"total": 3, "resumed": 2, "failed": 0}
    assert manifest["summary"]["samples"] == 2
    assert not make_plan(FramesStage(), wd, FramesParams(size=32)).cached  # size is in the fingerprint

def test_frames_of_a_variable_rate_video_are_the_ones_extract_selected_with_fps(tmp_path):
    """extract's --fps goes by the frames' times on a variable-rate video and marks the sample ``timed``; a sample
    extracted before that rule has no mark and was selected by index. `skel frames` takes the frames each one's
    poses were made from (test_extract.py::VFR_5FPS)."""
    video = REPO / "tests" / "data" / "vfr.webm"
    selected = {"timed": [0, 6, 12, 18, 22, 24, 26, 28, 30, 32, 34, 36, 38], "by_index": [0, 6, 12, 18, 24, 30, 36]}
    samples = {sid: ({"label": i, "split": "train", "img_h": 48, "img_w": 64, "fps": 5.0, "source": str(video),
                      "extra": json.dumps({"timed": True} if sid == "timed" else {})},
                     _skeleton((8, 56), (6, 42), len(frames))) for i, (sid, frames) in enumerate(selected.items())}
    extract_output(tmp_path, samples, fps=5.0)
    with Cluster(workers=0) as cluster:
        run_stage(RenderStage(), tmp_path, RenderParams(size=32), cluster, quiet=True)
        out = run_stage(FramesStage(), tmp_path, FramesParams(size=24), cluster, quiet=True)
    cap, decoded = cv2.VideoCapture(str(video)), []
    while (frame := cap.read())[0]:
        decoded.append(cv2.cvtColor(frame[1], cv2.COLOR_BGR2RGB))
    frames, volumes = FrameStore(out), VolumeStore(next((tmp_path / "render").iterdir()))
    for row in frames.index.to_pylist():
        attrs = volumes.meta(row["sample_id"])
        source = [selected[row["sample_id"]][t] for t in attrs["frames"]]
        expected = np.stack([crop_resize(decoded[i], attrs["crop_box"], 24) for i in source])
        np.testing.assert_array_equal(frames.read(row["array"]), expected)


def test_a_failed_frames_output_retries_its_failed_samples_once_the_cause_is_mended(frames_workdir):
    """Over the error budget the output fails; the same command after the missing video is back retries the
    failed samples (the fingerprint cannot see the mend) and keeps the committed good ones."""
    wd, video = frames_workdir
    params = FramesParams(size=24, samples_per_shard=1)
    with Cluster(workers=0) as cluster:
        with pytest.raises(SkelError, match=r"3 of 5 samples failed, more than --max-errors 0"):
            run_stage(FramesStage(), wd, params, cluster, quiet=True, max_errors=0)
        gone = wd / "gone.avi"
        gone.write_bytes(video.read_bytes())
        try:
            out = run_stage(FramesStage(), wd, params, cluster, quiet=True)
        finally:
            gone.unlink()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["summary"]["samples"] == 3 and manifest["summary"]["errors"] == 2
    assert manifest["shards"]["resumed"] == 2  # the good samples' shards are kept
    assert "missing" in {r["sample_id"] for r in FrameStore(out).index.to_pylist()}


@pytest.mark.slow
def test_frames_refuse_a_video_that_changed_since_its_poses_were_extracted(shared, tmp_path):
    """`skel frames` decodes the videos again: one replaced since extraction (another clip of the same size) gave the
    new video's pixels beside the old video's poses and crop boxes, without a word. Extract records each video's
    sha256 with its sample; frames makes a sample whose video has other bytes an error naming it."""
    from apps.predict.synthetic import draw_figures, figures, write_video
    from pipeline.integrity import sha256
    from stores.triplets import TripletStore
    from tests.support import skel

    clips = {}
    for name in ("wave", "squat"):
        kp, score = figures([name], 16, (240, 320))
        clips[name] = write_video(tmp_path / f"{name}.mp4", draw_figures(kp, score, (240, 320)))
    (tmp_path / "data" / "a").mkdir(parents=True)
    video = tmp_path / "data" / "a" / "x.mp4"
    video.write_bytes(clips["wave"].read_bytes())
    w = tmp_path / "w"
    skel("extract", tmp_path / "data", "-w", w, "--models", shared / "models", "--pose-model", "movenet-lightning",
         "-j", "0", "-q")
    [extract] = (w / "extract").iterdir()
    [sid] = TripletStore(extract).ids()
    assert json.loads(TripletStore(extract).meta(sid)["extra"])["video_sha256"] == sha256(video)
    skel("render", "-w", w, "--size", "32", "-j", "0", "-q")
    skel("frames", "-w", w, "--size", "32", "-j", "0", "-q")
    video.write_bytes(clips["squat"].read_bytes())
    proc = skel("frames", "-w", w, "--size", "48", "-j", "0", check=False)
    assert proc.returncode == 1 and f"{video} changed since its poses were extracted (other bytes): run skel " \
        "extract again" in " ".join(proc.stderr.split()), proc.stderr


def test_frames_follow_extracts_frame_selection(shared):
    video = shared / "media" / NTU
    box = (700, 200, 1300, 800)
    got = read_frames(str(video), FrameSelection(stride=3), [0, 2, 4], box, (1080, 1920), 32)
    for i, t in enumerate((0, 2, 4)):  # triplet frame t = the t-th selected frame = source frame 3t
        assert np.abs(got[i].astype(int) - _reference(video, 3 * t, box, 32).astype(int)).mean() < 1.5
    with pytest.raises(ValueError, match="needs frame 40"):
        read_frames(str(video), FrameSelection(stride=3), [0, 40], box, (1080, 1920), 32)


def test_frames_feed_the_model_through_aligned_sampling(frames_workdir):
    wd, _ = frames_workdir
    with Cluster(workers=0) as cluster:
        out = run_stage(FramesStage(), wd, FramesParams(size=64), cluster, quiet=True)
    frames, volumes = FrameStore(out), VolumeStore(next((wd / "render").iterdir()))
    sid, name = (frames.index.column(c)[0].as_py() for c in ("sample_id", "array"))
    spec = ClipSpec(rgb_size=64, pose_size=16)
    clip = train_clip(10, spec, np.random.RandomState(0))
    imgs, heat = apply_clip(frames.read(name, clip.rgb), volumes.read(sid, clip.pose), clip, spec,
                            volumes.attrs["flip_perm"])
    model = small_model().eval()
    with torch.no_grad():
        rgb, pose = model((imgs[None], heat[None]))
    assert rgb.shape == pose.shape == (1, 5) and torch.isfinite(rgb).all() and torch.isfinite(pose).all()
