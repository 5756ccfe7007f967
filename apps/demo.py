"""`skel demo`: synthetic clips, the demo recipe (workflows/demo.toml) over them, and the previews it shows."""

from __future__ import annotations

from pathlib import Path

from apps.synth import generate
from pipeline.workflow import Recipe, load_recipe
from stages import get_stage
from stores.safepickle import dump_pickle

RECIPE = Path(__file__).parents[1] / "workflows" / "demo.toml"


def synthetic_data(workdir: Path, per_class: int) -> tuple[Path, dict]:
    """``per_class`` synthetic clips of each action (seed 0), written to ``workdir/synthetic.pkl``."""
    workdir.mkdir(parents=True, exist_ok=True)
    pkl = workdir / "synthetic.pkl"
    data = generate(per_class, seed=0)
    dump_pickle(data, pkl)
    return pkl, data


def demo_recipe(pkl: Path) -> Recipe:
    """The demo recipe over the synthetic pickle ``pkl``."""
    return load_recipe(RECIPE, get_stage, given={"DEMO_PKL": str(pkl)})


def previews(outs: dict[str, Path], n: int = 3) -> dict[str, Path]:
    """PNG previews of ``n`` joint and limb volumes of the demo's render steps: kind -> their folder."""
    from stages.render.preview import write_previews

    return {kind: write_previews(outs[f"render_{kind}"], n)[0].parent for kind in ("joint", "limb")}
