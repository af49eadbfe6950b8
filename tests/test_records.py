"""The typed records of run.json and the head's sidecar: round trips, the one-line errors naming the file and
the field, versions, what a resume compares, and the map layout of classifier and concept runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import save_tiny_classifier, write_image

import generate_cam
from finer_cam.concepts import ConceptSet
from finer_cam.errors import FinerCamError
from finer_cam.models import read_sidecar
from finer_cam.records import (BackboneRecord, HeadFileRecord, HeadRecord, MapLayout, PreprocessingRecord,
                               RunRecord)
from finer_cam.runstore import RunFolder, read_run
from finer_cam.targets import parse_modes

ROOT = Path(__file__).resolve().parents[1]
# the keys run.json has held since before it had a version, in their order (a classifier run, then at the end
# the summary)
LEGACY_KEYS = ["dataset_root", "modes", "method", "target_layer", "backbone", "head", "class_names_file",
               "class_names", "preprocessing", "similarity", "target", "save_size", "map_dtype", "aug_smooth",
               "precision", "decode", "compile", "num_workers", "versions", "summary"]


def a_run(**changes) -> RunRecord:
    record = RunRecord(
        dataset_root="/data", modes=tuple(parse_modes(["baseline:0", "finer:0.6:1,2,3"])), method="gradcam",
        target_layer="backbone.blocks[-1].norm1",
        backbone=BackboneRecord(path="/w/b.pth", sha256="ab" * 32, arch="vit_base", kind="dinov2",
                                shape={"embed_dim": 768, "depth": 12, "registers": 0, "patch_size": 14}),
        head=HeadFileRecord(path="/w/head.pth", num_classes=3, sha256="cd" * 32), class_names_file="/w/c.txt",
        class_names=("a", "b", "c"),
        preprocessing=PreprocessingRecord(image_size=224, max_size=None, patch=14, interpolation="bicubic",
                                          mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                                          normalize="imagenet"),
        similarity="logit-distance", target="label", save_size="input", map_dtype="float16", aug_smooth=False,
        precision="fp32", decode="pil", compile=False, num_workers=0, versions={"finer_cam": "0.1.0"})
    return replace(record, **changes)


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("records")
    save_tiny_classifier(tmp, num_classes=2, depth=1)
    (tmp / "classes.txt").write_text("a\nb\n", encoding="utf-8")
    for i, name in enumerate("ab"):
        write_image(tmp / "data" / name / "0.png", size=(40, 30), seed=i)
    assert generate_cam.main(["--dataset_path", str(tmp / "data"), "--save_dir", str(tmp / "out"),
                              "--model_path", str(tmp / "backbone.pth"), "--classifier_path", str(tmp / "head.pth"),
                              "--class_names", str(tmp / "classes.txt"), "--image_size", "28", "--device", "cpu",
                              "--num_workers", "0"]) == 0
    return tmp / "out"


def test_run_json_is_what_it_was_plus_a_version_and_reads_back_to_the_same_record(generated):
    data = json.loads((generated / "run.json").read_text())
    assert list(data) == ["version", *LEGACY_KEYS] and data["version"] == RunRecord.VERSION == 1
    record, entries = read_run(generated)
    assert record.to_json() == data and list(record.to_json()) == list(data)
    assert json.dumps(record.backbone.to_json()) == json.dumps(data["backbone"])  # the keys in their order too
    assert record.modes[1].name == "finer" and record.modes[1].ranks == (1, 2, 3)
    assert record.summary == {"total": 2, "processed": 2, "skipped": 0, "failed": 0, "label_fallback": 0}
    assert record.backbone.kind == "dinov2" and record.backbone.shape["embed_dim"] == 64
    # the index lines record the ranking each reference of theirs was taken from, most similar first
    for entry in entries.values():
        assert entry["ranking"] == [1 - entry["target"]] and entry["references"]["compare"] == entry["ranking"]


def test_a_record_round_trips_through_its_file(tmp_path):
    for record in (a_run(), a_run(head=None, class_names_file=None, backbone=replace(a_run().backbone, pool="cls"),
                                  concepts=ConceptSet(("red", "blue"), ("bird",)))):
        record.write(tmp_path / "run.json")
        back = RunRecord.read(tmp_path / "run.json")
        assert back == record and back.to_json() == record.to_json()
    data = json.loads((tmp_path / "run.json").read_text())
    assert data["head"] is None and data["class_names_file"] is None  # said to be none, not left out
    assert data["concepts"]["texts"] == ["a photo of a red.", "a photo of a blue.", "a photo of a bird."]
    assert "summary" not in a_run().to_json() and "pool" not in a_run().backbone.to_json()


@pytest.mark.parametrize("change, says", [
    (lambda d: d.pop("modes"), "'modes' is missing"),
    (lambda d: d.pop("class_names"), "'class_names' is missing"),
    (lambda d: d.update(modes="finer:1:1"), "'modes' 'finer:1:1' is not a list"),
    (lambda d: d["modes"][1].update(alpha="0.6"), "'modes[1].alpha' '0.6' is not a number"),
    (lambda d: d["modes"][0].pop("name"), "'modes[0].name' is missing"),
    (lambda d: d.update(class_names=["a", 2]), "'class_names[1]' 2 is not a string"),
    (lambda d: d["backbone"].update(embed_dim=[768]), "'backbone.embed_dim' [768] is not an integer or a string"),
    (lambda d: d["head"].update(num_classes=True), "'head.num_classes' True is not an integer"),
    (lambda d: d["preprocessing"].update(mean=[0.5, 0.5]), "'preprocessing.mean' [0.5, 0.5] is not three numbers"),
    (lambda d: d.update(concepts={"prompt": "{}"}), "'concepts.names' is missing"),
    (lambda d: d.update(num_workers="auto"), "'num_workers' 'auto' is not an integer"),
    (lambda d: d.update(summary={"total": 1.5}), "'summary.total' 1.5 is not an integer"),
    (lambda d: d.update(version="1"), "'version' '1' is not a version"),
    # values of the right type that no run writes: refused on reading, not left to fail later
    (lambda d: d.update(modes=[]), "'modes' [] is not a list of modes as"),
    (lambda d: d["modes"][1].update(alpha=float("nan")), "'modes' "),
    (lambda d: d["modes"][1].update(ranks=[0]), "'modes' "),
    (lambda d: d["modes"][1].update(name="../x"), "'modes' "),
    (lambda d: d["modes"][1].update(name=d["modes"][0]["name"]), "each name once"),
    (lambda d: d["preprocessing"].update(image_size=None, max_size=None), "'preprocessing.image_size' None is not"),
    (lambda d: d["preprocessing"].update(image_size=10**9), "'preprocessing.image_size' 1000000000 is not a side"),
    (lambda d: d["preprocessing"].update(image_size=0), "'preprocessing.image_size' 0 is not a side"),
    (lambda d: d["preprocessing"].update(std=[0.2, 0.0, 0.2]), "'preprocessing.std' [0.2, 0.0, 0.2] is not three "
                                                               "positive numbers"),
])
def test_a_missing_or_ill_typed_field_is_named_in_one_line(tmp_path, change, says):
    data = a_run().to_json()
    change(data)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    with pytest.raises(FinerCamError) as caught:
        RunRecord.read(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and says in message and "\n" not in message, message


def test_files_that_are_no_record_are_one_line_errors(tmp_path):
    path = tmp_path / "run.json"
    for text, says in (("{", "unreadable ("), ("[1, 2]", "not a generate_cam.py run description")):
        path.write_text(text)
        with pytest.raises(FinerCamError) as caught:
            RunRecord.read(path)
        assert str(caught.value).startswith(f"{path}: {says}") and "\n" not in str(caught.value)


def test_a_newer_version_is_refused_and_a_file_without_one_is_version_1(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({**a_run().to_json(), "version": RunRecord.VERSION + 1}))
    with pytest.raises(FinerCamError) as caught:
        RunRecord.read(path)
    assert str(caught.value) == f"{path}: version 2 is newer than this finer_cam reads (up to 1); update finer_cam"
    old = a_run().to_json()
    del old["version"]  # as the project wrote it before records had versions, with a key no record knows
    path.write_text(json.dumps({**old, "written_by": "an older finer_cam"}))
    assert RunRecord.read(path) == a_run() and RunRecord.read(path).to_json()["version"] == 1
    # a hand-made run.json with only what the readers need (as the field guide's tests write)
    minimal = RunRecord.from_json({"modes": [{"name": "baseline", "alpha": 0}], "class_names": ["a"]})
    assert minimal.modes[0].ranks == () and minimal.backbone is None and minimal.layout.lead_shape == (1,)


def test_resume_differences_name_the_fields_declared_for_it():
    run = a_run()
    assert run.resume_differences(a_run()) == []
    changed = a_run(modes=tuple(parse_modes(["baseline:0"])), similarity="logit-rank", num_workers=8,
                    versions={"finer_cam": "9"}, summary={"total": 1})
    assert run.resume_differences(changed) == ["modes", "similarity"]  # not the workers, versions or summary
    other_file = a_run(backbone=replace(run.backbone, sha256="ef" * 32))
    assert run.resume_differences(other_file) == ["backbone"]
    assert run.resume_differences(a_run(preprocessing=replace(run.preprocessing, image_size=112))) == ["preprocessing"]
    assert run.resume_differences(a_run(head=None, concepts=ConceptSet(("red",)))) == ["head", "concepts"]


def test_the_backbone_is_compared_without_the_name_of_its_architecture(tmp_path):
    named = a_run(backbone=replace(a_run().backbone, arch="auto"))
    assert a_run().resume_differences(named) == []
    assert a_run().backbone.resumed() == named.backbone.resumed() and "arch" not in named.backbone.resumed()
    wider = a_run(backbone=replace(a_run().backbone, shape={**a_run().backbone.shape, "embed_dim": 1024}))
    assert a_run().resume_differences(wider) == ["backbone"]
    # through the run folder: a rerun that names the architecture resumes, one on another backbone is refused
    RunFolder(tmp_path, a_run()).release()
    RunFolder(tmp_path, named).release()
    with pytest.raises(FinerCamError, match="this folder holds a run with a different backbone; use another"):
        RunFolder(tmp_path, wider)
    (tmp_path / "run.json").write_text(json.dumps({**a_run().to_json(), "version": 7}))
    with pytest.raises(FinerCamError, match="newer than this finer_cam reads .*; use another "):
        RunFolder(tmp_path, a_run())


def test_the_map_layout_of_a_classifier_run_and_of_a_concept_run():
    modes = tuple(parse_modes(["baseline:0", "finer:0.6:1,2,3", "compare:1:1:softmax"]))
    plain = MapLayout(modes)
    assert plain.class_per_image and plain.lead_shape == (3,) and plain.dims == "modes"
    [row] = plain.rows
    assert row.concept is None and [p.position for p in row.panels] == [(0,), (1,), (2,)]
    assert [p.label for p in row.panels] == ["baseline (α=0)", "finer (α=0.6)", "compare (α=1, softmax)"]
    assert plain.index_references([4, 2]) == {"baseline": [], "finer": [4, 2], "compare": [4]}
    assert plain.index_target(3) == 3
    concepts = a_run(modes=modes, concepts=ConceptSet(("red", "blue"), ("bird",))).layout
    assert not concepts.class_per_image and concepts.lead_shape == (2, 3) and concepts.dims == "concepts x modes"
    assert [(r.concept, r.name, r.panels[2].position) for r in concepts.rows] == [(0, "red", (0, 2)),
                                                                                   (1, "blue", (1, 2))]
    refs = concepts.index_references([[2], [2]])
    assert refs == [{"baseline": [], "finer": [2], "compare": [2]}] * 2 and concepts.index_target(None) == [0, 1]
    assert concepts.row_references({"references": refs}) == refs
    assert concepts.row_references({"references": {"finer": [1]}}) == [{}, {}]  # not a concept run's line


def test_the_sidecar_record(tmp_path):
    for folder in ("stanford_cars", "birds525"):  # the shipped ones read back to what they hold
        path = ROOT / "pretrained_models" / "classifier" / folder / "classifier_config.json"
        data = json.loads(path.read_text())
        record = HeadRecord.read(path)
        assert record.to_json() == data and list(record.to_json()) == list(data) and record.normalize == "clip"
    assert read_sidecar(tmp_path / "head.pth") == HeadRecord()  # no sidecar: nothing recorded
    (tmp_path / "classifier_config.json").write_text(json.dumps({"image_size": 112}))  # an old, partial one
    assert read_sidecar(tmp_path / "head.pth").image_size == 112
    for bad, says in (({"format": 2}, "format 2 is newer than this finer_cam reads"),
                      ({"backbone": {"kind": "dinov2", "depth": None}}, "'backbone.depth' None is not an integer"),
                      ({"accuracy": {"best": "high"}}, "'accuracy.best' 'high' is not a number"),
                      ({"normalize": "foo"}, "'normalize' 'foo' is not one of imagenet, clip")):
        (tmp_path / "classifier_config.json").write_text(json.dumps(bad))
        with pytest.raises(FinerCamError) as caught:
            read_sidecar(tmp_path / "head.pth")
        assert str(caught.value).startswith(f"{tmp_path / 'classifier_config.json'}: {says}")
