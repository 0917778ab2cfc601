"""services.common.timing: the Server-Timing header the services send."""

from __future__ import annotations

from services.common.timing import ServerTiming


def test_phases_and_backend_entries_make_one_header():
    t = ServerTiming()
    t.add("upload", 0.0042)
    t.extend("generator", "forward;dur=41.5, png;dur=9.7")
    with t.phase("progress"):
        pass
    header = t.header()
    assert header.startswith("upload;dur=4.2, generator-forward;dur=41.5, generator-png;dur=9.7, progress;dur=")
    assert t.as_headers() == {"Server-Timing": header}
    assert ServerTiming().as_headers() == {}


def test_malformed_backend_entries_are_dropped():
    t = ServerTiming()
    t.extend("classifier", 'infer;dur=12.5, evil"name;dur=1, noduration, x;dur=-3, ;dur=4, ok;desc="a";dur=2')
    t.extend("classifier", None)
    assert t.entries == [("classifier-infer", 12.5)]

