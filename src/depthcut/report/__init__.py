"""Reports: report.json, report.md and an importance heatmap PNG."""
