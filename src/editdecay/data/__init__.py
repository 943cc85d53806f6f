"""Data: one typed edit-record shape for every edit-data format, plus the fine-tuning/downstream corpora.

``records`` (``EditRecord``, CounterFact/zsRE/user JSONL readers, an edit manifest's records; errors name
file, record and field), ``corpora`` (commonsense, Alpaca, HotpotQA, raw text, the downstream test sets, the
tiny tokenizer's text), ``tokens`` (the tokenisation rules the editor and the scorer share, and
``pad_token_id``: the one pad-token fallback of every padded batch).

May import: :mod:`editdecay.models`, :mod:`editdecay.util` and :mod:`editdecay.errors`; never a stage after
it (edit, finetune, evaluate, experiment, report).
"""

from editdecay.data.records import EditRecord, load_edit_records, resolve_edit_data

__all__ = ["EditRecord", "load_edit_records", "resolve_edit_data"]
