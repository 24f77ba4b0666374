"""A minute of tools/soak in the suite, every door at once, a kill -9 every 1-4 s (docs/testing.md
says how to run it for an hour)."""
from soak import soak, DOORS


def test_a_minute_of_soak(data_dir):
    s = soak(data_dir, 60)          # asserts 0 lost, 0 counted twice, the restart, the rebuild, verify
    assert s["kills"] > 0 and s["recoveries"] == s["kills"]
    assert all(s["sent"][d] > 0 for d in DOORS)
    log = open(data_dir + "-sensorlogd.log").read()
    assert '"retention deleted segments"' in log and '"compacted segments"' in log, "retention or compaction never ran"
