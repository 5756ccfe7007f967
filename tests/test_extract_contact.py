"""People cut by the frame edge and people in contact (issue 24): padded crops, confirmation on the joints in
the frame, pose NMS, each joint owned by one person, identities through contact. Real onnxruntime sessions on
the shared models, real frames of the shared NTU sample (and composites of it)."""

from __future__ import annotations

import cv2
import numpy as np

from models.detector import box_iou
from stages.extract.core import Timing, confirm, detect_people, posed, step
from stages.extract.params import ExtractParams
from stages.extract.poses import oks, pose_nms
from stages.extract.track import Tracker
from stages.extract.video import VideoReader
from tests.support import NTU_BOX
from tools.extract_eval import person_mask

HEAD, LIMBS, KNEES_ANKLES = [0, 1, 2, 3, 4], list(range(7, 17)), [13, 14, 15, 16]
CUT = 560  # rows of the NTU frame above this are cut off: only the person's knees and feet stay in view


def test_padded_crop_of_a_box_past_the_edge_flags_out_of_frame_keypoints(extract_models, ntu_frame):
    _, thunder = extract_models
    truth = thunder(ntu_frame, np.array([NTU_BOX], np.float32))[0]  # the whole person, in view
    top = 400  # the frame from the person's shoulders down: the head is cut off
    frame = np.ascontiguousarray(ntu_frame[top:top + 300])
    x0, y0, x1, y1 = NTU_BOX
    box = np.array([[x0, y0 - top, x1, y1 - top, 1.0]], np.float32)  # the box's true extent, past the top edge
    kps = posed(frame, box, thunder, ExtractParams())[0][0]
    assert (kps[HEAD, 1] < 0).all()  # in frame coordinates: the head above the frame, where it is
    np.testing.assert_array_equal(kps[kps[:, 1] < 0, 2], 0)  # out of the frame: flagged
    assert (thunder(frame, box)[0][HEAD, 2] > 0).all()  # (the model's own scores there are not 0)
    seen = kps[:, 2] >= 0.3
    assert seen[LIMBS].sum() >= 8
    err = np.hypot(*(kps[LIMBS, :2] - truth[LIMBS, :2] + [0, top]).T)
    assert err[seen[LIMBS]].max() < 20  # the joints in view found where they are


def test_cut_person_is_confirmed_and_an_empty_box_is_not(extract_models, ntu_frame):
    _, thunder = extract_models
    legs = np.ascontiguousarray(ntu_frame[CUT:CUT + 300])
    box = np.array([[NTU_BOX[0], 0, NTU_BOX[2], NTU_BOX[3] - CUT, 0.5]], np.float32)
    assert thunder(legs, box)[0, :, 2].mean() < ExtractParams().lost_score  # the old rule drops this person
    boxes, kps = confirm(legs, box, thunder, ExtractParams())
    assert len(boxes) == 1 and (kps[0, KNEES_ANKLES, 2] > 0.3).all()
    wall = np.array([[200, 100, 420, 520, 0.5]], np.float32)  # bare wall, no one there
    assert len(confirm(ntu_frame, wall, thunder, ExtractParams())[0]) == 0


def test_pose_nms_keeps_one_pose_per_person(extract_models, ntu_frame):
    _, thunder = extract_models
    x0, y0, x1, y1 = NTU_BOX
    twice = np.array([[x0, y0, x1, y1, 0.6], [x0 - 45, y0 - 55, x1 + 45, y1 + 55, 0.5]], np.float32)
    assert box_iou(twice[:1], twice[1:])[0, 0] < 0.5  # box fusion (IoU ≥ 0.5) keeps both
    kps = thunder(ntu_frame, twice)
    assert oks(kps[:1], kps[1:])[0, 0] > 0.8  # both crops find the same person
    assert len(confirm(ntu_frame, twice, thunder, ExtractParams())[0]) == 1
    np.testing.assert_array_equal(pose_nms(oks(kps, kps), np.array([0.5, 0.6]), 0.5), [1])  # the better one stays
    other = kps.copy()
    other[1, :, 0] += 200  # the same pose 200 px aside is another person
    np.testing.assert_array_equal(pose_nms(oks(other, other), np.array([0.5, 0.6]), 0.5), [0, 1])


def touching_frame(rgb: np.ndarray, kps: np.ndarray, overlap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The NTU frame with the person's mirror image pasted beside it (through a soft silhouette drawn from its
    skeleton), overlapping it by `overlap` × its width: the frame and both people's boxes [2, 4]."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = NTU_BOX
    shift = int(x0 + overlap * (x1 - x0) - (w - x0))  # the mirrored box's right edge lands inside the person
    mirrored = np.roll(np.ascontiguousarray(rgb[:, ::-1]), shift, axis=1)
    mk = kps.copy()
    mk[:, 0] = w - 1 - kps[:, 0] + shift
    alpha = person_mask((h, w), mk, y1 - y0)[..., None]
    frame = (rgb * (1 - alpha) + mirrored * alpha).astype(np.uint8)
    return frame, np.array([[w - x1 + shift, y0, w - x0 + shift, y1], list(NTU_BOX)], np.float32)


def test_touching_people_keep_their_own_joints_and_identities(extract_models, ntu_frame):
    detector, thunder = extract_models
    kps = thunder(ntu_frame, np.array([NTU_BOX], np.float32))[0]
    frame, truth = touching_frame(ntu_frame, kps, 0.2)  # arms and mugs touch (bench/README.md shows it)
    boxes, poses = detect_people(frame, detector, thunder, ExtractParams())
    assert len(boxes) == 2
    match = box_iou(truth, boxes).argmax(axis=1)
    assert sorted(match) == [0, 1] and (box_iou(truth, boxes).max(axis=1) >= 0.5).all()
    for j, i in enumerate(match):
        b, k = truth[j], poses[i]
        seen = k[k[:, 2] >= 0.3]
        grown = b + np.array([-1, -1, 1, 1]) * 0.1 * (b[3] - b[1])
        inside = (seen[:, 0] >= grown[0]) & (seen[:, 0] <= grown[2]) & (seen[:, 1] >= grown[1])
        assert len(seen) >= 8 and inside.mean() >= 0.9  # each skeleton on its own person
    tracker, tm = Tracker(), Timing()
    params = ExtractParams(detect_every=2)
    truths = []
    for t, overlap in enumerate(np.linspace(-0.3, 0.3, 9)):  # from beside each other into contact
        frame, truth = touching_frame(ntu_frame, kps, overlap)
        step(frame, t, tracker, detector, thunder, params, tm)
        truths.append(truth)
    long = [tr for tr in tracker.tracks if len(tr.poses) >= 8]
    assert len(long) == 2  # two people, each followed through the contact
    for tr in long:
        who = {int(box_iou(b[None], truths[t]).argmax()) for t, (_, b) in tr.poses.items()}
        assert len(who) == 1  # a track stays on one person: no identity swap


def test_padded_detector_pass_maps_boxes_back_to_the_frame(shared, ntu_frame):
    from models.detector import MoveNetMultiPose, Padded

    x0, y0, x1, y1 = NTU_BOX
    s = 1.3 * 720 / (y1 - y0)  # a close-up: the person 1.3× the frame's height, cut at the top and bottom
    m = np.float32([[s, 0, 640 - s * (x0 + x1) / 2], [0, s, -0.3 * (s * (y1 - y0) - 720) - s * y0]])
    frame = cv2.warpAffine(ntu_frame, m, (1280, 720))
    multipose = MoveNetMultiPose(shared / "models")
    plain, padded = multipose(frame), Padded(multipose, 0.5)(frame)
    assert len(plain) == len(padded) == 1 and box_iou(plain, padded)[0, 0] > 0.8  # the same person, in frame pixels
    assert padded[0, 1] < 0  # on the padded canvas the box may run past the frame's edge
    assert len(Padded(multipose, 0.5)(cv2.resize(ntu_frame, (1280, 720)))) == 0  # people inside: the plain pass's


def test_two_people_side_by_side_get_a_skeleton_each(extract_models, shared):
    """A real frame (the shared two-person demo, frame 70): one crop holds both people and the pose model
    poses the other one; the box is posed again with that person hidden, so each gets its own skeleton."""
    detector, thunder = extract_models
    rgb = next(rgb for i, rgb in VideoReader(str(shared / "media" / "mmaction2_demo_skeleton.mp4")) if i == 70)
    hand = np.array([[688, 297, 1042, 925], [840, 252, 1045, 885]], np.float32)  # tests/data/person_boxes.json
    boxes, poses = detect_people(rgb, detector, thunder, ExtractParams())
    assert len(boxes) == 2 and oks(poses[:1], poses[1:])[0, 0] < 0.5  # two different skeletons
    joints = np.stack([np.concatenate([k[k[:, 2] >= 0.3, :2].min(0), k[k[:, 2] >= 0.3, :2].max(0)]) for k in poses])
    fit = box_iou(joints, hand)
    assert sorted(fit.argmax(axis=1)) == [0, 1] and (fit.max(axis=1) >= 0.5).all()  # one on each person


def test_a_followed_crop_that_slides_onto_the_other_person_is_lost_not_swapped(extract_models, ntu_frame):
    """Between detector runs each person is posed on a crop around its last pose; deep in contact the crop of the
    pasted person holds the real one, and the pose model poses that one instead. A followed pose that is not the
    track's last pose again (OKS < `pose_nms`) counts as lost, so no track jumps onto the other person."""
    detector, thunder = extract_models
    kps = thunder(ntu_frame, np.array([NTU_BOX], np.float32))[0]
    tracker, tm, truths = Tracker(), Timing(), []
    for t, overlap in enumerate(np.linspace(-0.2, 0.8, 10)):  # into deep contact; detector on frames 0 and 5
        frame, truth = touching_frame(ntu_frame, kps, overlap)
        step(frame, t, tracker, detector, thunder, ExtractParams(), tm)
        truths.append(truth)
    for tr in tracker.tracks:
        who = {int(box_iou(b[None], truths[t]).argmax()) for t, (_, b) in tr.poses.items()}
        assert len(who) == 1  # a track stays on one person: no identity swap
    front = [tr for tr in tracker.tracks if box_iou(tr.poses[0][1][None], truths[0]).argmax() == 0]
    assert len(front) == 1 and len(front[0].poses) == 10  # the pasted person (in front) kept on every frame
