"""Report writers (JSON for scripts, Markdown for people)."""
from edgevit.report.writers import markdown, write_reports

__all__ = ["markdown", "write_reports"]
