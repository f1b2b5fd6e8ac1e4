import json

import pytest

from downloader import RecordError, read_jsonl
from downloader.records import RecordFile, write_jsonl


def test_torn_last_line_is_skipped(tmp_path, caplog):
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": 3, "b"')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    assert "r.jsonl:3: torn last line" in caplog.text


@pytest.mark.parametrize("text, line, why", [
    ('{"a": 1}\nnot json\n{"a": 2}\n', 2, "not JSON"),
    ('{"a": 1}\n{"a": 2}\n{"a": 3, "b"\n', 3, "not JSON"),  # a whole last line (it ends in a newline) is not torn
    ('[1, 2]\n', 1, "not a JSON object but list"),
    ('{"a": 1}\n' + "[" * 100_000 + "]" * 100_000 + "\n", 2, "not JSON"),  # json raised RecursionError
])
def test_any_other_bad_line_is_an_error_naming_file_and_line(tmp_path, text, line, why):
    path = tmp_path / "r.jsonl"
    path.write_text(text)
    with pytest.raises(RecordError, match=rf"r\.jsonl:{line}: {why}"):
        read_jsonl(path)
    problems: list[str] = []
    good = read_jsonl(path, problems)
    assert len(problems) == 1 and problems[0].startswith(f"{path}:{line}: {why}")
    assert good == [json.loads(text) for text in text.splitlines() if text.startswith("{") and text.endswith("}")]


def test_record_file_skips_and_reports_bad_lines(tmp_path):
    path = tmp_path / "failures.jsonl"
    path.write_text('{"photo": 1}\nnonsense\n{"no photo": 2}\n{"photo": 3}\n')
    records = RecordFile(path, key=lambda r: r["photo"])
    assert sorted(r["photo"] for r in records.records()) == [1, 3]
    assert len(records.problems) == 2 and records.problems[0] == f"{path}:2: not JSON (Expecting value)"
    records.rewrite()
    assert read_jsonl(path) == [{"photo": 1}, {"photo": 3}]


def test_appending_after_a_torn_line_keeps_the_new_record_whole(tmp_path):
    path = tmp_path / "manifest.jsonl"
    path.write_text('{"path": "a"}\n{"path": "b", "ki')  # a killed run
    records = RecordFile(path, key=lambda r: r["path"])
    records.add({"path": "c"})
    records.add({"path": "d"})
    # killed again before the rewrite: the torn line is now a bad line of its own, the new records are whole
    problems: list[str] = []
    assert [r["path"] for r in read_jsonl(path, problems)] == ["a", "c", "d"]
    assert len(problems) == 1 and problems[0].startswith(f"{path}:2: not JSON")


def test_write_jsonl_is_atomic_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [{"b": 1, "a": 2}])
    assert path.read_text() == json.dumps({"a": 2, "b": 1}) + "\n"
    with pytest.raises(RuntimeError):
        write_jsonl(path, ({"x": 1} if i == 0 else (_ for _ in ()).throw(RuntimeError("disk")) for i in range(2)))
    assert path.read_text() == json.dumps({"a": 2, "b": 1}) + "\n"  # the old content, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["r.jsonl"]
