"""The evaluation report: metrics with full curves (metrics), plots (plots) and the self-contained
HTML page (html). The table tools it embeds live in tables/."""
