import json

import pytest

from common import ManifestError, read_manifest

GOOD = {"path": "shop/1.jpg", "kind": "shop", "photo": 1, "product": 7, "category": "bags", "split": None,
        "bbox": None}


def write(path, lines):
    path.write_text("".join(lines), encoding="utf-8")
    return path


def test_bad_lines_are_skipped_and_named_with_file_and_line(tmp_path):
    manifest = write(tmp_path / "m.jsonl", [
        json.dumps(GOOD) + "\n",
        "not json\n",
        json.dumps(["a list"]) + "\n",
        json.dumps(dict(GOOD, kind=None)) + "\n",
        json.dumps({k: v for k, v in GOOD.items() if k != "kind"}) + "\n",
        json.dumps(dict(GOOD, path="../x.jpg")) + "\n",
        json.dumps(dict(GOOD, path="/etc/passwd")) + "\n",
        json.dumps(dict(GOOD, path="shop/../../x.jpg")) + "\n",
        json.dumps(dict(GOOD, kind="street", split=None)) + "\n",
        json.dumps(dict(GOOD, photo="1")) + "\n",
        json.dumps(dict(GOOD, path="shop/./2.jpg")) + "\n",
    ])
    read = read_manifest(manifest)
    assert [e.path for e in read.entries] == ["shop/1.jpg", "shop/2.jpg"]
    assert [p.split(": ", 1)[0] for p in read.problems] == [f"{manifest}:{n}" for n in range(2, 11)]
    assert "not JSON" in read.problems[0] and "leaves the manifest's folder" in read.problems[4]
    assert "absolute" in read.problems[5]


def test_strict_stops_at_the_first_bad_line(tmp_path):
    manifest = write(tmp_path / "m.jsonl", [json.dumps(GOOD) + "\n", "{}\n"])
    with pytest.raises(ManifestError, match=rf"^{manifest}:2: 'kind' must be"):
        read_manifest(manifest, strict=True)


def test_only_a_torn_last_line_is_skipped_quietly(tmp_path):
    manifest = write(tmp_path / "m.jsonl", [json.dumps(GOOD) + "\n", '{"path": "shop/2.j'])
    read = read_manifest(manifest, strict=True)
    assert len(read.entries) == 1 and read.problems == []
    assert read.file(read.entries[0]) == tmp_path / "shop" / "1.jpg"


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="m.jsonl: manifest does not exist"):
        read_manifest(tmp_path / "m.jsonl")
