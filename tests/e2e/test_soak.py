"""A minute of tools/soak in the suite (docs/operations.md says how to run it longer)."""
from soak import soak


def test_a_minute_of_soak(data_dir):
    kills, _ = soak(data_dir, 60)
    assert kills > 0
    log = open(data_dir + "-sensorlogd.log").read()
    assert '"retention deleted segments"' in log and '"compacted segments"' in log, "retention or compaction never ran"
