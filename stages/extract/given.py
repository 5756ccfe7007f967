"""An extract output built from given skeletons (no video decoding): what `skel extract` would write for
videos whose keypoints are known, for the tests and benchmarks of the stages downstream of extract (render,
frames, train) on real videos."""

from __future__ import annotations

from pathlib import Path

from pipeline.atomic import write_json
from stores.triplets import Skeleton, finalize_tables, part_name, sample_table, write_part


def extract_output(workdir: Path, samples: dict[str, tuple[dict, Skeleton]], fingerprint: str = "0" * 16) -> Path:
    """``<workdir>/extract/<fingerprint>``: one part with every sample, as ``skel extract`` writes it.

    ``samples`` maps a sample id to (its row: label, split, img_h, img_w, fps, source, ...; the part,
    row group, frame and person counts are filled in) and its skeleton.
    """
    out = workdir / "extract" / fingerprint
    part, rows = part_name("00000"), []
    for i, (sid, (row, skel)) in enumerate(samples.items()):
        persons, frames = skel.keypoint.shape[:2]
        rows.append({"extra": None, **row, "sample_id": sid, "n_frames": frames, "n_persons": persons,
                     "part": part, "row_group": i})
    write_part(out / part, [sample_table(sid, skel) for sid, (_, skel) in samples.items()])
    finalize_tables(out, {"00000": {"samples": rows, "errors": []}}, "extract")
    write_json(out / "manifest.json", {"stage": "extract", "fingerprint": out.name, "state": "complete",
                                       "params": {"stride": 1, "fps": None}, "finished": "2026-01-01T00:00:00"})
    return out
