"""The run folder's logs: read whole or from the end, a half-written last line skipped, one steady part."""

from __future__ import annotations

import json

from mp_rl.runfolder import RunFolder, read_jsonl, steady


def test_the_last_lines_are_read_from_the_end_and_match_a_whole_read(tmp_path):
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(json.dumps({"i": i, "pad": "x" * 300}) + "\n" for i in range(1000)) + '{"i": 10')
    whole = read_jsonl(path)
    assert len(whole) == 1000  # the half-written last line is not a record
    assert read_jsonl(path, last=5) == whole[-4:]  # the last 5 lines: 4 records and the partial one
    assert read_jsonl(path, last=5000) == whole


def test_metrics_need_a_clock_and_the_steady_part_is_after_the_first_fifth_of_the_time(tmp_path):
    lines = [{"time": t, "unix_time": 1e9 + t} for t in range(0, 100, 10)] + [{"note": "no clock"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    metrics = RunFolder(tmp_path).metrics()
    assert len(metrics) == 10
    assert [m["time"] for m in steady(metrics)] == list(range(20, 100, 10))
    assert steady(metrics, "unix_time") == steady(metrics) and steady([]) == []
