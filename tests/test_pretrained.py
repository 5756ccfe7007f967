"""Shipped pretrained checkpoints (models/pretrained): the real file, its digest and card, ``init`` by name."""

from __future__ import annotations

import hashlib

import pytest
import torch

from inference import checkpoint
from models import build_model
from models.pretrained import PRETRAINED, names, resolve_init
from stages.train.stage import TrainParams, TrainStage
from stages.train.transfer import load_pretrained, log_report, pretrained_weights

pytestmark = pytest.mark.usefixtures("torch_threads")

NAME = "penn-joint-s16"
ENTRY = PRETRAINED[NAME]


def test_every_entry_ships_its_file_and_card() -> None:
    for name in names():
        entry = PRETRAINED[name]
        assert hashlib.sha256(entry.path.read_bytes()).hexdigest() == entry.sha256, name
        card = entry.card.read_text()
        for words in ("research", "skel ", "Trained on", "Measured"):  # licence, rebuild command, data, gains
            assert words in card, (name, words)


def test_a_name_resolves_to_the_shipped_file_before_hashing() -> None:
    by_name = TrainParams(init=NAME, model=ENTRY.model, model_args=ENTRY.model_args)
    assert by_name.init == str(ENTRY.path) == resolve_init(NAME)
    by_path = TrainParams(init=str(ENTRY.path), model_args=ENTRY.model_args)
    # the head marker keeps an init training made before the head's rows followed the class names from being a
    # cache hit: the same checkpoint and params now start from other rows
    marker = {"init_sha256": ENTRY.sha256, "head": "rows by class name"}
    assert TrainStage().external(by_name) == TrainStage().external(by_path) == marker
    assert TrainParams(init=NAME, model_args={"base_channels": 16, "stage_blocks": (2, 3, 2)}).init == by_name.init


def test_unknown_names_and_other_networks_are_named() -> None:
    with pytest.raises(ValueError, match=f"neither a file nor a pretrained model; names: .*{NAME}"):
        TrainParams(init="penn-joint-s99")
    with pytest.raises(ValueError, match=r"--model slowonly --base-channels 16 --stage-blocks \d(,\d)+; in a "
                                         "recipe model = 'slowonly', model_args = { base_channels = 16"):
        TrainParams(init=NAME)  # the default, larger SlowOnly: the weights would not fit


@pytest.mark.parametrize("name, kind", [("penn-joint-s16", "joint"), ("penn-limb-s16", "limb")])
def test_the_checkpoint_loads_into_the_recipe_network(name: str, kind: str) -> None:
    entry = PRETRAINED[name]
    model, config = checkpoint.load_model(entry.path)  # what `skel test` and `skel predict` read
    assert (config["num_classes"], config["in_channels"], config["kind"]) == (15, 17, kind)
    assert config["clip_len"] == 16 and config["input_size"] == 32
    probs = model.predict_proba(torch.zeros(1, 17, 16, 32, 32))
    assert probs.shape == (1, 15) and torch.isfinite(probs).all()
    fresh = build_model(entry.model, num_classes=5, in_channels=17, **entry.model_args)  # a new 5-class set
    report = load_pretrained(fresh, pretrained_weights(entry.path))
    assert len(report.head_replaced) == 2 and not report.skipped and not report.missing
    stem = "backbone.conv1.conv.weight"
    assert torch.equal(fresh.state_dict()[stem], model.state_dict()[stem])


def test_a_stream_refuses_the_other_kinds_start() -> None:
    """Joint and limb volumes have the same 17 channels: a limb start would load into a joint stream silently."""
    from pipeline.errors import SkelError

    limb = PRETRAINED["penn-limb-s16"].path
    assert pretrained_weights(limb, "limb").keys() == pretrained_weights(limb).keys()
    with pytest.raises(SkelError, match="pretrained on limb heatmaps, these volumes are joint"):
        pretrained_weights(limb, "joint")


def test_a_checkpoint_damaged_inside_a_tensor_is_refused(tmp_path) -> None:
    """torch.load does not check the CRCs its zip holds: bytes flipped inside a tensor loaded as other weights (one
    of 1e29 in an audit), exit 0. The CRC of every member is checked first; the intact file still loads."""
    import zipfile

    from pipeline.errors import SkelError

    data = bytearray(ENTRY.path.read_bytes())
    with zipfile.ZipFile(ENTRY.path) as archive:
        member = max(archive.infolist(), key=lambda i: i.file_size)  # the largest tensor's bytes, stored as they are
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[start + 100:start + 104] = bytes(4 - i for i in range(4))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    with pytest.raises(SkelError, match=rf"^{bad}: damaged \({member.filename} does not match the checksum the file "
                                        r"holds for it\)$"):
        pretrained_weights(bad)
    assert pretrained_weights(ENTRY.path)  # intact


def test_an_init_checkpoint_is_loaded_only_with_the_bytes_its_run_planned(tmp_path) -> None:
    """The trainer loads ``--init`` after the plan hashed it: replaced in between, it was loaded unhashed under the
    old file's fingerprint. With the planned digest, other bytes are refused; the planned ones load as before."""
    from pipeline.errors import SkelError

    init = tmp_path / "init.pt"
    init.write_bytes(ENTRY.path.read_bytes())
    planned = hashlib.sha256(init.read_bytes()).hexdigest()
    loaded = pretrained_weights(init, sha256=planned)
    assert all(torch.equal(v, pretrained_weights(ENTRY.path)[k]) for k, v in loaded.items())
    init.write_bytes(PRETRAINED["penn-limb-s16"].path.read_bytes())
    with pytest.raises(SkelError, match=rf"^{init}: changed since this run planned it: run the command again$"):
        pretrained_weights(init, sha256=planned)


def test_the_head_follows_the_class_names(capsys, caplog) -> None:
    """A user's classes in another order, or some of Penn's, keep their rows of the head; a class Penn never had
    gets a fresh head, though the count matches (it used to keep Penn's head whenever the count matched), and the
    classes it never had are said (the report named only the head's key). Volumes without names take the rows in
    label order, as pyskl does, which is said."""
    entry = PRETRAINED[NAME]
    model, config = checkpoint.load_model(entry.path)
    penn, head = config["classes"], model.state_dict()["cls_head.fc_cls.weight"]

    def loaded(classes: list[str]) -> tuple[torch.nn.Module, object]:
        net = build_model(entry.model, num_classes=len(classes), in_channels=17, **entry.model_args)
        return net, load_pretrained(net, pretrained_weights(entry.path, "joint", classes))

    net, report = loaded(penn[::-1])
    assert torch.equal(net.state_dict()["cls_head.fc_cls.weight"], head.flip(0)) and not report.head_replaced
    net, report = loaded([penn[3], penn[0]])
    assert torch.equal(net.state_dict()["cls_head.fc_cls.weight"], head[[3, 0]]) and not report.head_replaced
    capsys.readouterr()
    _, report = loaded([*penn[:13], "my_wave", "my_clap"])
    assert len(report.head_replaced) == 2 and not report.missing and len(report.loaded) > 100
    said = " ".join(capsys.readouterr().err.split())
    assert "head: 2 of the 15 classes are not among the checkpoint's 15 ('my_wave', 'my_clap'; names match exactly)" \
        in said, said
    with caplog.at_level("WARNING", logger="skel"):
        _, report = loaded(penn)
        log_report(entry.path, report)
        assert "name no classes" not in caplog.text  # named volumes, or a check that knows none (TrainStage.check)
        log_report(entry.path, report, named=False)
    assert "the checkpoint's head rows are taken in label order (label i is its class i)" in caplog.text
