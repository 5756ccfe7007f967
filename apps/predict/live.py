"""`skel predict --live SOURCE`: frames -> people -> a ring buffer of poses per track -> a decision every
``stride`` frames on the last ``window`` frames, with bounded latency.

A reader thread takes frames from a camera, a stream or a file played at its own frame rate (as a camera
would deliver it) into a queue of ``queue`` frames; when processing falls behind, the oldest frame is
dropped (and counted) instead of queueing without bound, so decisions stay about the newest frames. Each
frame's time is when the source delivered it (for a file: its scheduled play time), and a decision's
latency is measured from the newest frame it used.

A window with a skeleton in fewer than half its frames (``windows.MIN_POSED``) gives no decision. The
summary says why there were none or few (``LiveSummary.notes``): the window never filled, its frames had
too few skeletons, or many frames were dropped because processing was slower than the source.
"""

from __future__ import annotations

import collections
import logging
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from apps.predict.model import Classifier
from apps.predict.offline import window_row
from apps.predict.overlay import draw_people
from apps.predict.windows import MIN_POSED, Window, classify, classify_people
from models.detector import PersonDetector
from models.pose import PoseEstimator
from pipeline.errors import Interrupts, SkelError
from pipeline.fingerprint import param_default
from stages.extract.core import Timing, detect, follow, place, step
from stages.extract.mp4 import Mp4Writer
from stages.extract.params import ExtractParams, ExtractStageParams
from stages.extract.track import Tracker
from stages.extract.video import capture
from stores.coco import NUM_KEYPOINTS
from stores.persons import rank_persons
from stores.triplets import pose_arrays

LIVE_NUM_CLIPS = 1  # test clips per decision: one, so that a decision takes less than the frames between them
DROP_NOTE = 0.1  # share of the source's frames dropped above which the summary explains the drops
FAST_POSE = "movenet-lightning"  # the fastest pose model shipped
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
log = logging.getLogger("skel")


@dataclass(frozen=True)
class LiveParams:
    """How to run on a live source."""

    window: int = 48  # frames per decision (the newest ones)
    stride: int = 8  # processed frames between decisions
    per_person: bool = False
    queue: int = 2  # frames buffered between the reader and processing (older ones are dropped)
    min_presence: float = 0.5  # per person: share of the window a track must be posed in
    max_frames: int | None = None  # stop after this many source frames
    top: int = 5

    def __post_init__(self) -> None:
        if self.window < 1 or self.stride < 1 or self.queue < 1:
            raise ValueError("window, stride and queue must be >= 1")


@dataclass(frozen=True)
class Frame:
    index: int  # in the source
    time: float  # perf_counter when the source delivered it
    bgr: np.ndarray


def open_source(source: str) -> tuple[cv2.VideoCapture, bool]:
    """An opened capture and whether it is a file to play at its own frame rate."""
    camera = source.isdigit()
    if camera and Path(source).exists():
        log.warning("--live %s: camera %s; a file of that name is here too: --live ./%s plays it", source, source,
                    source)
    is_file = not camera and Path(source).is_file()
    cap = cv2.VideoCapture(int(source)) if camera else capture(source)
    if not cap.isOpened():
        cap.release()
        raise SkelError(f"{source}: cannot open it (not a camera index, a stream OpenCV reads, or a video file)")
    return cap, is_file


class FrameSource:
    """Frames of a capture read by a thread into a bounded queue that drops its oldest frame when full."""

    def __init__(self, cap: cv2.VideoCapture, *, paced: bool, capacity: int = 2, max_frames: int | None = None):
        self.cap, self.paced, self.max_frames = cap, paced, max_frames
        self.fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
        if paced and self.fps <= 0:
            self.fps = 25.0
        self.queue: collections.deque[Frame] = collections.deque()
        self.capacity = capacity
        self.dropped = 0
        self.read = 0
        self.position = 0  # source frames read or skipped
        self.announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if paced else 0  # a file's frame count
        self.done = threading.Event()
        self.stop = threading.Event()
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="frame-source", daemon=True)

    def _push(self, frame: Frame) -> None:
        with self.cond:
            if len(self.queue) >= self.capacity:
                self.queue.popleft()
                self.dropped += 1
            self.queue.append(frame)
            self.cond.notify()

    def _run(self) -> None:
        start, i = time.perf_counter(), 0
        try:
            while not self.stop.is_set() and (self.max_frames is None or i < self.max_frames):
                if self.paced:  # a camera delivers frame i at start + i / fps: skip what is already late
                    due = start + i / self.fps
                    late = int((time.perf_counter() - due) * self.fps)
                    if late > 0:
                        skipped = 0
                        while skipped < late and (self.max_frames is None or i < self.max_frames) and self.cap.grab():
                            skipped, i = skipped + 1, i + 1
                        with self.cond:
                            self.dropped += skipped
                        if skipped < late:
                            break
                        continue
                    time.sleep(max(0.0, due - time.perf_counter()))
                ok, bgr = self.cap.read()
                if not ok:
                    break
                self.read += 1
                self._push(Frame(i, start + i / self.fps if self.paced else time.perf_counter(), bgr))
                i += 1
        finally:
            self.position = i
            with self.cond:
                self.done.set()
                self.cond.notify()

    def __iter__(self) -> Iterator[Frame]:
        self.thread.start()
        while True:
            with self.cond:
                while not self.queue and not self.done.is_set():
                    self.cond.wait(0.1)
                if not self.queue:
                    return
                frame = self.queue.popleft()
            yield frame

    @property
    def cut_short(self) -> bool:
        """A file that ended before its announced frame count, neither stopped nor at ``max_frames``: truncated or
        corrupt (offline, the same file is an error)."""
        return (self.done.is_set() and not self.stop.is_set() and 0 < self.position < self.announced
                and (self.max_frames is None or self.position < self.max_frames))

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.cap.release()


class Poser:
    """Detection, pose and tracking one frame at a time, as `extract_video` does over a whole video.

    With ``background=True`` (live sources) the detector runs in a thread of its own, so its cost does not
    stall the frames: a frame that is due a detector run hands a copy to the thread and is posed around the
    previous keypoints meanwhile; the boxes, when they come back (a few frames later), are posed and
    confirmed in the frame current then (the pose crop's margin absorbs the motion in between). With nobody
    to follow, the frame waits for the detector (there is nothing else to do). onnxruntime
    releases the GIL, so detector and pose run on two cores at once."""

    def __init__(self, detector: PersonDetector, pose: PoseEstimator, params: ExtractParams,
                 background: bool = False) -> None:
        self.detector, self.pose, self.params = detector, pose, params
        self.tracker = Tracker(params.iou_threshold, params.max_age)
        self.timer = Timing()
        self.t = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="detector") if background else None
        self.pending: Future | None = None
        self.requested = -params.detect_every  # frame of the last detector request

    def __call__(self, rgb: np.ndarray) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        """track id -> (keypoints [17, 3], box [5]) of the people in this frame."""
        p, t = self.params, self.t
        if self.pool is None:
            step(rgb, t, self.tracker, self.detector, self.pose, p, self.timer)
        else:
            self._step_background(rgb, t)
        self.t += 1
        people = {}
        for tr in self.tracker.tracks:
            if tr.last_frame == t:
                people[tr.id] = (tr.kps, tr.box)
            tr.poses.clear()  # the ring buffer keeps what is needed; the tracker keeps only the last pose
        return people

    def _step_background(self, rgb: np.ndarray, t: int) -> None:
        p = self.params
        nobody = not self.tracker.recent(t, max_age=1)
        if nobody:
            self._request(rgb, t)
        if self.pending is not None and (nobody or self.pending.done()):  # nobody to follow: wait for the boxes
            boxes, self.pending = self.pending.result(), None
            place(rgb, t, self.tracker, boxes, self.pose, p, self.timer)
            return
        if not follow(rgb, t, self.tracker, self.pose, p, self.timer) or t - self.requested >= p.detect_every:
            self._request(rgb, t)

    def _request(self, rgb: np.ndarray, t: int) -> None:
        """Hand a copy of frame t to the detector thread, unless a run is already pending."""
        if self.pending is None:
            self.pending = self.pool.submit(detect, rgb.copy(), self.detector, self.timer)
            self.requested = t

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class RingBuffer:
    """The last ``size`` processed frames: their source index, time, and the poses of each track."""

    size: int
    frames: collections.deque = field(init=False)

    def __post_init__(self) -> None:
        self.frames = collections.deque(maxlen=self.size)

    def push(self, index: int, t: float, people: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
        self.frames.append((index, t, people))

    def arrays(self) -> tuple[list[int], np.ndarray, np.ndarray, np.ndarray]:
        """Track ids and their keypoints [M, T, 17, 2], scores [M, T, 17], boxes [M, T, 5] (zeros: absent)."""
        ids = sorted({k for _, _, people in self.frames for k in people})
        slot = {k: m for m, k in enumerate(ids)}
        rows = ((slot[k], t, kps[:, :2], kps[:, 2], b)
                for t, (_, _, people) in enumerate(self.frames) for k, (kps, b) in people.items())
        return ids, *pose_arrays(len(ids), len(self.frames), rows)

    def posed(self) -> int:
        """Frames of the buffer with anyone's skeleton."""
        return sum(bool(people) for _, _, people in self.frames)


@dataclass
class LiveSummary:
    window: int = 0  # frames a decision needs
    stride: int = 1  # processed frames between decision points
    frames: int = 0  # processed
    posed: int = 0  # processed frames with a skeleton
    dropped: int = 0
    source_fps: float = 0.0  # the rate the source delivered frames at
    checks: int = 0  # decision points with a full window
    unlabelled: int = 0  # of them, those that gave no decision
    most_posed: int = 0  # the most frames with a skeleton in a window that gave no decision
    decisions: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    busy: float = 0.0  # seconds spent processing (pose, decisions, overlay) rather than waiting for frames
    overlay: str | None = None
    overlay_error: str | None = None  # why the recording asked for could not be written
    interrupted: bool = False
    cut_short: tuple[int, int] | None = None  # a file that ended early: (frames it gave, frames it announced)
    # what ran: the speed hint names only what would change something
    pose_model: str = param_default(ExtractStageParams, "pose_model")
    num_clips: int = LIVE_NUM_CLIPS

    @property
    def capacity_fps(self) -> float:
        """Frames per second of processing time: what detector, pose and classifier keep up with."""
        return self.frames / self.busy if self.busy else 0.0

    def as_dict(self) -> dict:
        lat = np.asarray(self.latencies_ms) if self.latencies_ms else None
        return {
            "frames": self.frames, "dropped": self.dropped, "decisions": self.decisions,
            "fps": self.frames / self.seconds if self.seconds else 0.0,
            "capacity_fps": self.capacity_fps,
            "latency_ms": None if lat is None else {
                "median": float(np.median(lat)), "p95": float(np.percentile(lat, 95)), "max": float(lat.max())},
            "seconds": self.seconds, "overlay": self.overlay, "overlay_error": self.overlay_error,
            "interrupted": self.interrupted,
            "window": self.window, "posed": self.posed, "source_fps": self.source_fps, "checks": self.checks,
            "unlabelled": self.unlabelled, "notes": self.notes(),
        }  # fmt: skip

    def notes(self) -> list[str]:
        """Why there were no or fewer decisions than windows, and why frames were dropped: one line each."""
        lines = [self._window_note()] if self.frames < self.window or self.unlabelled or not self.checks else []
        total = self.frames + self.dropped
        if total and self.dropped > DROP_NOTE * total:
            lines.append(f"{self.dropped} of {total} frames dropped: detector, pose and classifier handled "
                         f"{self.capacity_fps:.1f} frames/s, the source delivered {self.source_fps:.1f}/s "
                         f"(what helps: {', '.join(self._speed_hints())})")
        if not self.decisions and lines:
            lines[0] = f"no decision: {lines[0]}"
        if self.overlay and self.dropped:
            lines.append(f"the recording {self.overlay} holds the {self.frames} frames processed, not the "
                         f"{self.dropped} dropped, at the source's rate: it plays {total / self.frames:.1f}x as fast")
        if self.cut_short:
            lines.append(f"the file ended after {self.cut_short[0]} of the {self.cut_short[1]} frames it announces: "
                         "truncated or corrupt")
        return lines

    def _speed_hints(self) -> list[str]:
        """What would make processing faster, of what this run did not use already."""
        faster = [f"--pose-model {FAST_POSE}"] if self.pose_model != FAST_POSE else []
        faster += ["fewer --num-clips"] if self.num_clips > 1 else []
        return [*faster, "a longer --stride", "a smaller input"]

    def _window_note(self) -> str:
        """Why windows gave no decision: never filled, too few skeletons, or no one person in enough frames."""
        if self.frames < self.window:
            return (f"the window never filled: {self.frames} frames processed ({self.posed} with a skeleton), "
                    f"a decision needs {self.window} (--window)")
        if not self.checks:
            return (f"the source ended before a decision point: {self.frames} frames processed, a decision every "
                    f"{self.stride} (--stride) once {self.window} (--window) are in")
        need = max(1, math.ceil(MIN_POSED * self.window))
        if self.most_posed < need:
            return (f"{self.unlabelled} of {self.checks} windows not labelled: at most {self.most_posed} of their "
                    f"{self.window} frames had a skeleton, a decision needs {need}")
        return (f"{self.unlabelled} of {self.checks} windows not labelled: no one person had a skeleton in "
                f"{MIN_POSED:.0%} of their {self.window} frames")

    def describe(self) -> str:
        d = self.as_dict()
        lat = d["latency_ms"]
        text = (f"{d['frames']} frames ({d['fps']:.1f}/s), {d['dropped']} dropped, {d['decisions']} decisions"
                + (f", latency median {lat['median']:.0f} ms, p95 {lat['p95']:.0f} ms" if lat else ""))
        return text + (f"; overlay: {d['overlay']}" if d["overlay"] else "")


def describe(decision: dict) -> str:
    """One decision as a line of text."""
    who = f" id {decision['track']}" if decision["track"] is not None else ""
    best = decision["top"][0]
    return (f"frame {decision['frame']}{who}: {best['label']} {best['score']:.2f} "
            f"({decision['latency_ms']:.0f} ms, {decision['dropped']} dropped)")


def decide(clf: Classifier, ring: RingBuffer, img_shape: tuple[int, int], p: LiveParams,
           max_persons: int) -> list[Window]:
    """Windows for the whole scene (its ``max_persons`` most confident tracks, 0: all) or for each track."""
    ids, kp, score, box = ring.arrays()
    if not ids:
        return []
    if p.per_person:
        return classify_people(clf, kp, score, box, img_shape, tracks=ids, min_presence=p.min_presence)
    best = rank_persons(kp, score, None, img_shape, "score")[:max_persons or None]
    return classify(clf, kp[best], score[best], img_shape)


def run_live(
    source: str, clf: Classifier, *, detector: PersonDetector, pose: PoseEstimator, params: ExtractParams,
    live: LiveParams, emit: Callable[[dict], None], out: Path | None = None,
) -> LiveSummary:
    """Run until the source ends, ``max_frames`` or Ctrl-C; ``emit`` gets each decision as a dict:
    {frame (newest source index), start (oldest), track, box, top, latency_ms, dropped (so far)}."""
    cap, is_file = open_source(source)
    frames = FrameSource(cap, paced=is_file, capacity=live.queue, max_frames=live.max_frames)
    poser, ring = Poser(detector, pose, params, background=True), RingBuffer(live.window)
    summary = LiveSummary(window=live.window, stride=live.stride, source_fps=frames.fps, pose_model=params.pose_model,
                          num_clips=clf.num_clips)
    writer = Mp4Writer(out, frames.fps) if out else None
    labels: dict[int | None, str] = {}
    interrupts = Interrupts()
    main = threading.current_thread() is threading.main_thread()
    # a service is stopped by SIGTERM (systemd, docker stop, timeout) or SIGHUP (its ssh session closed): each
    # stops it as Ctrl-C does, with the recording and the summary kept
    previous = {sig: signal.signal(sig, interrupts) for sig in STOP_SIGNALS} if main else {}
    start = time.perf_counter()
    try:
        for frame in frames:
            t0 = time.perf_counter()
            rgb = cv2.cvtColor(frame.bgr, cv2.COLOR_BGR2RGB)
            people = poser(rgb)
            ring.push(frame.index, frame.time, people)
            n = summary.frames + 1
            if n % live.stride == 0 and len(ring.frames) == live.window:
                wins = [w for w in decide(clf, ring, rgb.shape[:2], live, params.max_persons) if w.labelled]
                summary.checks += 1
                if not wins:
                    summary.unlabelled += 1
                    summary.most_posed = max(summary.most_posed, ring.posed())
                latency = (time.perf_counter() - frame.time) * 1000
                labels = {w.track: w.label(clf.classes) for w in wins}
                with interrupts.held():  # a decision printed is one the summary counts
                    for w in wins:
                        row = window_row(w, clf.classes, live.top)
                        emit({"frame": frame.index, "start": ring.frames[0][0], "track": row["track"],
                              "box": row["box"], "top": row["top"], "latency_ms": round(latency, 1),
                              "dropped": frames.dropped})
                    if wins:
                        summary.decisions += 1
                        summary.latencies_ms.append(latency)
            if writer is not None:
                ids = list(people)
                kps = np.stack([people[k][0] for k in ids]) if ids else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
                boxes = np.stack([people[k][1] for k in ids]) if ids else np.zeros((0, 5), np.float32)
                draw_people(frame.bgr, ids, kps[..., :2], kps[..., 2], boxes, labels, labels.get(None, ""))
                with interrupts.held():
                    writer.write(frame.bgr)
            # a frame counts once it is fully handled (an interrupt may land anywhere)
            summary.frames, summary.posed = n, summary.posed + bool(people)
            summary.busy += time.perf_counter() - t0
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        interrupts.holding = True  # a second Ctrl-C while the recording is closed waits for it; a third ends at once
        if summary.interrupted:  # closing a stalled stream takes seconds
            log.warning("stopping: closing the source%s", " and the recording" if writer is not None else "")
        if writer is not None:  # first: a stalled stream may take its reader's timeout to close
            summary.frames = writer.frames  # what was recorded is what was processed, wherever Ctrl-C landed
            try:
                summary.overlay = str(writer.close()) if writer.frames else None
            except SkelError as exc:  # the decisions stand, and so does the summary
                summary.overlay_error = str(exc)
        if frames.cut_short:
            summary.cut_short = (frames.position, frames.announced)
        frames.close()
        poser.close()
        summary.seconds = time.perf_counter() - start
        summary.dropped = frames.dropped
        if not summary.source_fps and summary.seconds:  # a camera that does not report its rate
            summary.source_fps = (summary.frames + summary.dropped) / summary.seconds
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        summary.interrupted |= interrupts.pending
    return summary
