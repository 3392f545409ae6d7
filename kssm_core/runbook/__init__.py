"""The runbook as rules: criteria, verdicts, the decision matrix, sample quality, alerts, the playbook, run status. Never imports torch."""
