"""Data: one typed edit-record shape for every edit-data format, plus the fine-tuning/downstream corpora."""

from editdecay.data.records import EditRecord, load_edit_records, resolve_edit_data

__all__ = ["EditRecord", "load_edit_records", "resolve_edit_data"]
