"""What predict classifies with: the model's input contract (`ModelSpec`) and a network behind it.

A `ModelSpec` holds everything between skeletons and the network: the render parameters the model was
trained on (kind, sigma, size, crop), the class names, the clip length, the test size and the channel
permutation of the mirrored views. It comes from a train output's manifest chain, or from the metadata
`skel export` writes into the ONNX file, so both backends see exactly what training saw. The ONNX backend
needs onnxruntime only; torch is imported only when a train output is used.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from apps import onnx_seal
from apps.predict.views import eval_views
from models.detector import PersonDetector
from models.pose import PoseEstimator
from pipeline.atomic import special
from pipeline.errors import SkelError
from pipeline.fingerprint import param_default
from pipeline.inputs import find_output, inputs_of
from pipeline.workdir import MANIFEST, load_output
from stages.extract.params import ExtractStageParams
from stages.render.heatmap import render_volume
from stages.render.params import DTYPES
from stages.render.stage import RenderParams, prepare
from stages.test.params import TestParams
from stores.triplets import Skeleton
from stores.volumes import heat_values

log = logging.getLogger("skel")

METADATA_KEY = "skel.predict"  # ONNX metadata_props entry holding the ModelSpec as JSON


@dataclass(frozen=True)
class ModelSpec:
    """The input contract of a trained pose model."""

    render: RenderParams
    classes: tuple[str, ...]
    clip_len: int
    size: int  # test-time input size (the render size unless training said otherwise)
    flip_perm: tuple[int, ...]
    model: str = "unknown"

    def __post_init__(self) -> None:
        if sorted(self.flip_perm) != list(range(len(self.flip_perm))):
            raise ValueError(f"flip_perm {list(self.flip_perm)} is not a permutation of its {len(self.flip_perm)} "
                             "channels")

    def to_json(self) -> str:
        """The spec as an export writes it, saying that the file records its digest (``onnx_seal``): a file whose
        digest cannot be found then reads as damaged, not as one exported before skel recorded digests."""
        return json.dumps({**asdict(self), "render": asdict(self.render), "sealed": True})

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """The spec an export wrote; one edited by hand may name a class twice, which no export does (a training's
        classes name two the same only as its pickle did: those are kept)."""
        d = json.loads(text)
        spec = cls(RenderParams(**d["render"]), tuple(d["classes"]), int(d["clip_len"]), int(d["size"]),
                   tuple(d["flip_perm"]), d.get("model", "unknown"))
        if len(set(spec.classes)) != len(spec.classes) and not d.get("sealed"):
            twice = sorted({c for c in spec.classes if spec.classes.count(c) > 1})
            raise ValueError(f"classes named twice: {', '.join(twice)}")
        return spec

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """One view as the network takes it: channels (the flip permutation's length), frames, height, width."""
        return len(self.flip_perm), self.clip_len, self.size, self.size

    @classmethod
    def from_train_output(cls, train_dir: Path, config: dict) -> ModelSpec:
        """The spec of a train output whose checkpoint carries ``config``."""
        volumes = load_output(inputs_of(train_dir)["volumes"])
        classes = config.get("classes") or [str(i) for i in range(config["num_classes"])]
        return cls(RenderParams(**volumes.manifest["params"]), tuple(classes), int(config["clip_len"]),
                   int(config["test_size"]), tuple(config["flip_perm"]), config["model"])


Net = Callable[[np.ndarray], np.ndarray]  # views [N, K, T, H, W] float32 -> mean class probabilities [C]


@dataclass
class Classifier:
    """A network with its input contract and the test-time views to average (clips, mirrors)."""

    spec: ModelSpec
    net: Net
    num_clips: int = param_default(TestParams, "num_clips")  # as `skel test` views a sample
    flip: bool = True
    source: str = field(default="")

    @property
    def classes(self) -> tuple[str, ...]:
        return self.spec.classes

    def volume(self, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int]) -> np.ndarray:
        """float32 [K, T, size, size] heatmaps of skeletons [M, T, 17, 2] / [M, T, 17], cropped around them (the
        persons the model's render drew: all, or its ``max_persons`` ranked first), with the values `skel test`
        reads back from that render's store (uint8 volumes: rounded to 1/255)."""
        r = self.spec.render
        kp, score, _, _ = prepare(Skeleton(keypoint, score), img_shape, r)
        stored = render_volume(kp, score, (r.size, r.size), sigma=r.sigma, limbs=r.limbs, use_score=r.use_score,
                               dtype=DTYPES[r.dtype])
        return heat_values(stored, r.dtype)

    def views(self, volume: np.ndarray) -> np.ndarray:
        s = self.spec
        return eval_views(volume, s.clip_len, self.num_clips, size=s.size, flip=self.flip, perm=list(s.flip_perm))

    def probs(self, keypoint: np.ndarray, score: np.ndarray, img_shape: tuple[int, int]) -> np.ndarray:
        """Class probabilities [C] of one skeleton sequence (test-time views averaged)."""
        return self.net(self.views(self.volume(keypoint, score, img_shape)))


class OnnxNet:
    """An exported classifier on onnxruntime's CPU provider (input ``x``, output ``probs`` per view)."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        if special(path):
            raise SkelError(f"{path}: not a regular file (a FIFO, socket or device): export the model again")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise SkelError(f"{path}: {exc.strerror or exc}") from None
        damaged = SkelError(f"{path}: damaged (its bytes differ from what `skel export` wrote, by the sha256 it "
                            "recorded): export it again")
        sealed = onnx_seal.intact(data)
        if sealed is False:  # refused before onnxruntime parses what it cannot trust
            raise damaged
        try:
            self.sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises several types for unreadable models
            raise SkelError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from exc
        meta = self.sess.get_modelmeta().custom_metadata_map
        inputs = [i.name for i in self.sess.get_inputs()]
        if inputs != ["x"]:
            raise SkelError(f"{path}: takes inputs {inputs}; predict runs pose-only classifiers (one input x)")
        if METADATA_KEY not in meta:
            raise SkelError(f"{path}: no {METADATA_KEY} metadata (export it again with `skel export`)")
        try:
            said = json.loads(meta[METADATA_KEY])
            self.spec = ModelSpec.from_json(meta[METADATA_KEY])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise SkelError(f"{path}: unreadable {METADATA_KEY} metadata ({type(exc).__name__}: {exc}): export it "
                            "again") from None
        if sealed is None and (onnx_seal.KEY in meta or said.get("sealed")):  # the digest's own bytes are damaged
            raise damaged
        if sealed is None:
            log.warning("%s: records no digest (exported before skel recorded one), so damage to it cannot be "
                        "told: export it again to have it checked", path)
        self._check_shapes(path)

    def _check_shapes(self, path: Path) -> None:
        """The network's input and output agree with its spec (an edited or foreign file would fail on the first
        video instead, or score other classes)."""
        (x,), (probs,) = self.sess.get_inputs(), self.sess.get_outputs()
        takes, gives = tuple(x.shape[1:]), probs.shape[-1]
        if takes != self.spec.input_shape or gives != len(self.spec.classes):
            raise SkelError(f"{path}: its network takes views {list(takes)} and scores {gives} classes, but its "
                            f"{METADATA_KEY} metadata says {list(self.spec.input_shape)} and "
                            f"{len(self.spec.classes)} classes: export it again")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.sess.run(None, {"x": x})[0].mean(axis=0)


def load_classifier(*, run: Path | None = None, model_dir: Path | None = None, onnx: Path | None = None,
                    num_clips: int | None = None, flip: bool = True, threads: int = 0, last: bool = False
                    ) -> Classifier:
    """The classifier of exactly one of: a workdir's newest train output, a train output (its best.pt, or
    last.pt with ``last``, as test and export choose), an ONNX export."""
    if sum(x is not None for x in (run, model_dir, onnx)) != 1:
        raise SkelError("give exactly one of --run WORKDIR, --model DIR or --onnx FILE")
    prefix = model_dir is not None and not model_dir.is_dir() and model_dir.parent.name == "train"
    for flag, path in (("--run", run), ("--model", None if prefix else model_dir)):
        if path is not None and not path.is_dir():
            raise SkelError(f"{flag} {path}: no such directory")
    views = {"flip": flip} | ({"num_clips": num_clips} if num_clips is not None else {})
    if onnx is not None:
        net = OnnxNet(onnx, threads)
        return Classifier(net.spec, net, source=str(onnx), **views)
    if model_dir is not None and (model_dir / "train").is_dir():
        raise SkelError(f"--model {model_dir} is a workdir: give --run {model_dir} (its most recently used train "
                        f"output) or --model {model_dir}/train/<fingerprint>")
    if model_dir is not None and model_dir.resolve().name == "train" and not (model_dir / MANIFEST).exists():
        raise SkelError(f"--model {model_dir} is the folder of a workdir's train outputs: give --run "
                        f"{model_dir.resolve().parent} (the most recently used) or --model {model_dir}/<fingerprint>")
    if run is not None and (found := load_output(run)) is not None:
        use = f"give --model {run}" if found.stage == "train" else f"give --run {run.resolve().parent.parent}"
        raise SkelError(f"--run {run} is a {found.stage} output, not a workdir: {use}")
    if run is not None and run.resolve().name == "train" and not (run / "train").is_dir():
        raise SkelError(f"--run {run} is the folder of a workdir's train outputs: give --run {run.resolve().parent}")
    # --model W/train/FINGERPRINT, or the fingerprint's prefix as `skel status` lists it
    ref = None if run else model_dir.name if prefix else str(model_dir)
    train_dir = find_output(run or model_dir.resolve().parent.parent, ("train",), ref).path
    from apps.predict.torch_net import load_train_output  # torch only on this path

    spec, net = load_train_output(train_dir, threads, last=last)
    return Classifier(spec, net, source=str(train_dir), **views)


def pose_models(models: Path | None, pose_model: str, max_persons: int | None, per_person: bool
                ) -> tuple[ExtractStageParams, PersonDetector, PoseEstimator]:
    """The extraction settings and ONNX models predict runs on new video. ``max_persons`` tracks; by default every
    person for the whole scene, as extract keeps them for training, so the volume draws the persons the model's
    render drew (``Classifier.volume``), and 6 when labelling each person."""
    from stages.extract.stage import estimators

    kept = max_persons or (6 if per_person else param_default(ExtractStageParams, "max_persons"))
    params = ExtractStageParams(models=str(models) if models else None, pose_model=pose_model, max_persons=kept)
    return params, *estimators(params)
