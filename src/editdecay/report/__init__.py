"""Reports from a results store: the study's tables, statistics, figures and findings (see report.api)."""
