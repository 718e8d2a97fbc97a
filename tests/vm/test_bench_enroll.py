"""bench/enroll still runs on the lab's tree and judges itself (see tests/integration/test_bench_smoke.py).

It needs the lab's debootstrapped tree and its apt sidecar, which the ``lab_image`` fixture builds;
no VM boots. About a minute: the whole tree is enrolled four ways.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from imaguard_lab.build import Image, rootfs_dir
from imaguard_lab.recipe import Recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchrun import bench

# Marked vm although it boots nothing: it needs the lab's image build, which `-m "not vm"` promises to skip.
pytestmark = [pytest.mark.vm, pytest.mark.slow]


def test_enroll_bench_enrolls_the_lab_tree_both_ways_and_reports_ceilings(lab_image: Image, tmp_path: Path) -> None:
    del lab_image  # built for its rootfs
    doc = bench("enroll", "--tree", str(rootfs_dir(Recipe())), "--workdir", str(tmp_path), timeout=900)
    assert doc["ok"] is True
    passes = {p["pass"]: p for p in doc["passes"]}
    assert set(passes) == {"bundle", "local-rsa2048"}
    for p in passes.values():
        assert p["imaguard"]["files"] == doc["corpus"]["files"] > 1000
        assert p["ceiling_ratio"] > 0
        assert p["peak_met"] is True
