"""Report writers (JSON for scripts, Markdown for people)."""
from edgevit.report.files import write_reports
from edgevit.report.writers import markdown

__all__ = ["markdown", "write_reports"]
