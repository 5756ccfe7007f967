"""Pretrained checkpoints shipped with skel, by name: ``skel train --init penn-joint-s16``.

Each entry is a skel checkpoint in this folder (``model`` + ``config``, what ``skel test`` and ``--init``
read) with a model card (``<name>.md``: data, the command that rebuilds it, licence terms, measured gains).
``resolve_init`` turns a name into the file's path before anything hashes it, so a train run started from
the name and one started from the path are the same run (same fingerprint). The file's sha256 is checked
against the registry, so a damaged or Git-LFS-pointer copy is named instead of loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.integrity import sha256

HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pretrained:
    file: str
    sha256: str
    model: str
    model_args: dict = field(default_factory=dict)
    about: str = ""

    @property
    def path(self) -> Path:
        return HERE / self.file

    @property
    def card(self) -> Path:
        return self.path.with_suffix(".md")


def _penn(kind: str, digest: str) -> tuple[str, Pretrained]:
    """A Penn Action model of the small-data recipe's network, one per heatmap kind (same data and recipe)."""
    name = f"penn-{kind}-s16"
    return name, Pretrained(
        file=f"{name}.pt", sha256=digest, model="slowonly",
        model_args={"base_channels": 16, "stage_blocks": [2, 3, 2]},
        about=f"{kind} heatmaps (COCO-17, 32x32 render), 16-frame clips; Penn Action train split (research use only)",
    )


PRETRAINED: dict[str, Pretrained] = dict([
    _penn("joint", "8a5e516650464689cc3ead74554e7461d2d3ade4c2c624371eaf28376ccae052"),
    _penn("limb", "55bad3f46816c204a9f8c2da8c2a6871e0214639d9514ae28bd31c4131d69a92"),
])


def names() -> list[str]:
    return sorted(PRETRAINED)


def lookup(name: str) -> Pretrained | None:
    return PRETRAINED.get(name)


def resolve_init(init: str) -> str:
    """``init`` as a checkpoint path: an existing file as given, a registry name as its shipped file (checked
    by sha256); anything else unchanged (the train stage names a missing file)."""
    if Path(init).is_file() or init not in PRETRAINED:
        if "/" not in init and "\\" not in init and not Path(init).suffix and not Path(init).exists():
            raise ValueError(f"init {init!r}: neither a file nor a pretrained model; names: {', '.join(names())}")
        return init
    entry = PRETRAINED[init]
    if not entry.path.is_file():
        raise ValueError(f"pretrained model {init!r}: {entry.path} is missing from this installation")
    digest = sha256(entry.path)
    if digest != entry.sha256:
        raise ValueError(f"pretrained model {init!r}: {entry.path} has sha256 {digest}, expected {entry.sha256} "
                         "(damaged, or a Git LFS pointer instead of the file)")
    return str(entry.path)
