"""`kssm autopilot`: the runbook walked unattended (docs/autopilot.md).

plan (what to run: TOML -> validated dataclasses), classify (pure: a RunStatus -> the next decision),
state (RUNS_ROOT/autopilot/: the state file and decisions.jsonl), lock (one autopilot per runs root),
rewind (the last good checkpoint after a NaN), notify (bell, tmux, --notify CMD), report (report.md /
report.json), supervisor (the loop that spawns, watches and judges trainers through the one run model).
"""
