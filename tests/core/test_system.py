"""kssm_core.runfolder.system: the machine facts the status command and the cockpit's resource watch share."""

from __future__ import annotations

import os
import subprocess
import sys

from kssm_core.runfolder import system


def test_disk_usage_of_a_folder_not_created_yet_reads_its_parent(tmp_path):
    free, total = system.disk_usage(tmp_path / "results" / "stage1")
    assert 0 < free <= total
    assert system.nearest_existing(tmp_path / "a" / "b") == tmp_path


def test_process_meter_reads_a_live_process_and_forgets_a_dead_one():
    meter = system.ProcessMeter()
    rss, cpu = meter.read(os.getpid())
    assert rss is not None and rss > 10 * 1024 * 1024  # an interpreter with pytest loaded
    assert cpu is not None and cpu >= 0.0
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert meter.read(child.pid) == (None, None)  # reaped: no such process
    assert meter.read(None) == (None, None)


def test_cockpit_sampler_reports_every_fact_the_panel_shows(tmp_path):
    from kssm_tui.watch import Sampler, WatchTarget

    facts = Sampler().sample(WatchTarget(tmp_path / "not-yet", os.getpid()))
    assert set(facts) == {"disk_free_bytes", "mem_available_bytes", "mem_total_bytes", "cpu_percent",
                          "trainer_rss_bytes", "trainer_cpu_percent"}
    assert facts["disk_free_bytes"] > 0 and facts["trainer_rss_bytes"] > 0
    assert 0 < facts["mem_available_bytes"] <= facts["mem_total_bytes"]
