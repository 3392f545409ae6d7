"""Display widgets of the cockpit, one per module; they draw the plain data they are given and hold no domain logic.

chart.MetricChart, sparklines.SparklineStrip, matrix_panel.MatrixPanel, stage_plan.StagePlan,
resources.ResourcePanel, event_log.EventLog, alert_banner.AlertBanner. Untrusted text goes through
kssm_tui.safe_text (cleaned, never parsed as markup); ASCII-only drawing with KSSM_ASCII=1 or a non-UTF-8 terminal.
"""
