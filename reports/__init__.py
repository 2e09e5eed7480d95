"""reports: turns a study's analysis into a self-contained HTML page and a Markdown report
with PNG figures. Works from the store alone (no torch)."""

from reports.build import write_report

__all__ = ["write_report"]
