"""Edit records: every supported file format -> one typed :class:`EditRecord`.

Formats (detected from the fields of the first record, or forced with ``fmt``):

- ``counterfact-easyedit``: ``prompt`` (subject filled in), ``subject``, ``target_new``, ``ground_truth``,
  ``rephrase_prompt``, ``locality_prompt``, ``locality_ground_truth`` (the shared data's CounterFact files).
- ``counterfact-rome``: ROME/MEMIT's ``requested_rewrite`` {prompt with ``{}``, subject, target_new{str},
  target_true{str}}, ``paraphrase_prompts``, ``neighborhood_prompts``, ``attribute_prompts``,
  ``generation_prompts``.
- ``zsre``: MEMIT/MEND fields ``subject, src, rephrase, alt, answers, loc, loc_ans``. The edit target follows
  MEMIT/AlphaEdit's code (and the study): ``answers[0]``; ``zsre_target="alt"`` gives EasyEdit's convention.
- ``jsonl``: a user's own facts, one JSON object a line: ``subject``, ``prompt`` (with ``{}`` or containing
  the subject), ``target_new`` and optional ``target_true``, ``paraphrase_prompts``, ``neighborhood_prompts``,
  ``neighborhood_answers``, ``generation_prompts``, ``case_id``.

Targets are stored as written (no leading space); scoring adds the space a continuation needs.
Bad records raise :class:`DataError` naming file, record index and field, or with ``skip_invalid=True``
are reported in ``LoadReport.problems`` and skipped.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from editdecay.errors import DataError
from editdecay.util.io import stable_hash

FORMATS = ("counterfact-easyedit", "counterfact-rome", "zsre", "jsonl")


@dataclass
class EditRecord:
    """One fact to write into a model, with the prompts that measure it."""

    case_id: str
    subject: str
    prompt: str  # template with exactly one "{}" where the subject goes
    target_new: str
    target_true: str | None = None
    paraphrase_prompts: list[str] = field(default_factory=list)
    neighborhood_prompts: list[str] = field(default_factory=list)
    neighborhood_answers: list[str] = field(default_factory=list)  # true answer for each neighbourhood prompt
    attribute_prompts: list[str] = field(default_factory=list)
    generation_prompts: list[str] = field(default_factory=list)
    dataset: str = "user"  # "counterfact", "zsre" or "user": picks the metric family

    @property
    def filled_prompt(self) -> str:
        return fill(self.prompt, self.subject)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EditRecord:
        return cls(**data)


def records_hash(records: list[EditRecord]) -> str:
    """What identifies a list of records everywhere they are compared (grid plans, tracked edits, reused scores)."""
    return stable_hash([r.to_dict() for r in records])


def fill(template: str, subject: str) -> str:
    """Put the subject into a template; ``str.format`` is not used because prompts may hold other braces."""
    return template.replace("{}", subject, 1)


def records_from_manifest(manifest: dict[str, Any], source: str | os.PathLike) -> list[EditRecord]:
    """An edit manifest's ``records`` (read with :func:`editdecay.artifacts.read_edit_manifest`) as EditRecords,
    in order; errors name ``source``, the record and the field."""
    raw = manifest.get("records", [])
    if not isinstance(raw, list):
        raise DataError(str(source), "expected a list of edit records", field="records")
    fields = set(EditRecord.__dataclass_fields__)
    records = []
    for index, item in enumerate(raw):
        if not isinstance(item, dict):
            raise DataError(str(source), "expected an EditRecord object", index, "records")
        unknown = set(item) - fields
        if unknown:
            raise DataError(str(source), f"unknown EditRecord fields {sorted(unknown)}", index, "records")
        missing = {"case_id", "subject", "prompt", "target_new"} - set(item)
        if missing:
            raise DataError(str(source), f"missing EditRecord fields {sorted(missing)}", index, "records")
        try:
            records.append(EditRecord.from_dict(item))
        except (TypeError, ValueError) as exc:
            raise DataError(str(source), f"not an EditRecord ({exc})", index, "records") from None
    return records


@dataclass
class LoadReport:
    path: str
    fmt: str
    total: int
    loaded: int
    problems: list[str] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------------------
# field checks


class _Rec:
    """Typed field access on one raw record, with errors that name file, index and field."""

    def __init__(self, path: str, index: int, raw: Any):
        if not isinstance(raw, dict):
            raise DataError(path, f"expected a JSON object, got {type(raw).__name__}", index)
        self.path, self.index, self.raw = path, index, raw

    def err(self, field_name: str, message: str) -> DataError:
        return DataError(self.path, message, self.index, field_name)

    def str(self, name: str, *, required: bool = True, allow_empty: bool = False) -> str | None:
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise self.err(name, "missing field")
            return None
        value = self.raw[name]
        if not isinstance(value, str):
            raise self.err(name, f"expected a string, got {type(value).__name__}")
        if not allow_empty and not value.strip():
            raise self.err(name, "is empty")
        return value

    def str_list(self, name: str, *, required: bool = False) -> list[str]:
        if name not in self.raw or self.raw[name] is None:
            if required:
                raise self.err(name, "missing field")
            return []
        value = self.raw[name]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.err(name, f"expected a list of strings, got {type(value).__name__}")
        for j, item in enumerate(value):
            if not isinstance(item, str):
                raise self.err(f"{name}[{j}]", f"expected a string, got {type(item).__name__}")
        return list(value)

    def obj(self, name: str) -> _Rec:
        value = self.raw.get(name)
        if value is None:
            raise self.err(name, "missing field")
        if not isinstance(value, dict):
            raise self.err(name, f"expected an object, got {type(value).__name__}")
        sub = _Rec(self.path, self.index, value)
        sub.prefix = name
        return sub

    def case_id(self) -> str:
        value = self.raw.get("case_id", self.raw.get("known_id", self.raw.get("id")))
        return str(self.index) if value is None else str(value)


def _template(rec: _Rec, prompt: str, subject: str, field_name: str) -> str:
    """A prompt with the subject filled in (or already a template) -> template with one ``{}``."""
    if "{}" in prompt:
        if prompt.count("{}") != 1:
            raise rec.err(field_name, "template must contain exactly one '{}'")
        return prompt
    position = prompt.find(subject)
    if position < 0:
        raise rec.err(field_name, f"subject {subject!r} does not occur in prompt {prompt!r}")
    return prompt[:position] + "{}" + prompt[position + len(subject):]


def _target(rec: _Rec, name: str, value: Any) -> str:
    if isinstance(value, dict):
        value = value.get("str")
    if not isinstance(value, str):
        raise rec.err(name, f"expected a string target, got {type(value).__name__}")
    if not value.strip():
        raise rec.err(name, "target is empty")
    return value.strip()


# ----------------------------------------------------------------------------------------------------------
# one parser per format


def _parse_counterfact_easyedit(rec: _Rec, **_: Any) -> EditRecord:
    subject = rec.str("subject")
    prompt = _template(rec, rec.str("prompt"), subject, "prompt")
    target_new = _target(rec, "target_new", rec.raw.get("target_new"))
    target_true = _target(rec, "ground_truth", rec.raw.get("ground_truth"))
    if target_new == target_true:
        raise rec.err("target_new", "equals ground_truth: nothing to edit")
    locality = rec.str_list("locality_prompt")
    answers = rec.str_list("locality_ground_truth")
    if locality and len(answers) not in (1, len(locality)):
        raise rec.err("locality_ground_truth", "needs one answer, or one per locality prompt")
    if locality and len(answers) == 1:
        answers = answers * len(locality)
    return EditRecord(
        case_id=rec.case_id(),
        subject=subject,
        prompt=prompt,
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=rec.str_list("rephrase_prompt"),
        neighborhood_prompts=locality,
        neighborhood_answers=[a.strip() for a in answers],
        dataset="counterfact",
    )


def _parse_counterfact_rome(rec: _Rec, **_: Any) -> EditRecord:
    rewrite = rec.obj("requested_rewrite")
    subject = rewrite.str("subject")
    prompt = _template(rewrite, rewrite.str("prompt"), subject, "requested_rewrite.prompt")
    target_new = _target(rewrite, "requested_rewrite.target_new", rewrite.raw.get("target_new"))
    target_true = _target(rewrite, "requested_rewrite.target_true", rewrite.raw.get("target_true"))
    neighborhood = rec.str_list("neighborhood_prompts")
    return EditRecord(
        case_id=rec.case_id(),
        subject=subject,
        prompt=prompt,
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=rec.str_list("paraphrase_prompts"),
        neighborhood_prompts=neighborhood,
        neighborhood_answers=[target_true] * len(neighborhood),  # neighbours share the true object
        attribute_prompts=rec.str_list("attribute_prompts"),
        generation_prompts=rec.str_list("generation_prompts"),
        dataset="counterfact",
    )


def _parse_zsre(rec: _Rec, zsre_target: str = "answers", **_: Any) -> EditRecord:
    subject = rec.str("subject")
    prompt = _template(rec, rec.str("src"), subject, "src")
    answers = rec.str_list("answers", required=True)
    if not answers:
        raise rec.err("answers", "is empty")
    alt = rec.str("alt", required=zsre_target == "alt", allow_empty=zsre_target != "alt")
    if zsre_target == "answers":
        target_new, target_true = _target(rec, "answers[0]", answers[0]), None
    elif zsre_target == "alt":
        target_new, target_true = _target(rec, "alt", alt), _target(rec, "answers[0]", answers[0])
    else:
        raise ValueError(f"zsre_target must be 'answers' or 'alt', not {zsre_target!r}")
    loc = rec.str("loc", required=False)
    loc_ans = rec.str("loc_ans", required=loc is not None)
    return EditRecord(
        case_id=rec.case_id(),
        subject=subject,
        prompt=prompt,
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=rec.str_list("rephrase"),
        neighborhood_prompts=[loc + "?"] if loc else [],  # MEMIT's zsRE evaluation appends "?"
        neighborhood_answers=[loc_ans.strip()] if loc else [],
        dataset="zsre",
    )


def _parse_user(rec: _Rec, **_: Any) -> EditRecord:
    subject = rec.str("subject")
    prompt = _template(rec, rec.str("prompt"), subject, "prompt")
    target_new = _target(rec, "target_new", rec.raw.get("target_new"))
    target_true = rec.raw.get("target_true")
    target_true = _target(rec, "target_true", target_true) if target_true is not None else None
    neighborhood = rec.str_list("neighborhood_prompts")
    answers = rec.str_list("neighborhood_answers")
    if neighborhood and not answers and target_true:
        answers = [target_true] * len(neighborhood)
    if len(answers) != len(neighborhood):
        raise rec.err("neighborhood_answers", "needs one answer per neighborhood prompt (or a target_true)")
    return EditRecord(
        case_id=rec.case_id(),
        subject=subject,
        prompt=prompt,
        target_new=target_new,
        target_true=target_true,
        paraphrase_prompts=rec.str_list("paraphrase_prompts"),
        neighborhood_prompts=neighborhood,
        neighborhood_answers=answers,
        generation_prompts=rec.str_list("generation_prompts"),
        dataset=str(rec.raw.get("dataset", "user")),
    )


_PARSERS = {
    "counterfact-easyedit": _parse_counterfact_easyedit,
    "counterfact-rome": _parse_counterfact_rome,
    "zsre": _parse_zsre,
    "jsonl": _parse_user,
}


def detect_format(first: Any, path: str) -> str:
    if not isinstance(first, dict):
        raise DataError(path, f"expected JSON objects, got {type(first).__name__}", 0)
    keys = set(first)
    if "requested_rewrite" in keys:
        return "counterfact-rome"
    if {"src", "answers"} <= keys or {"src", "alt"} <= keys:
        return "zsre"
    if {"prompt", "target_new", "ground_truth"} <= keys:
        return "counterfact-easyedit"
    if {"subject", "prompt", "target_new"} <= keys:
        return "jsonl"
    raise DataError(
        path,
        f"cannot tell the format from the fields {sorted(keys)}; expected CounterFact (EasyEdit or ROME), "
        "zsRE (MEMIT) or user facts {subject, prompt, target_new}",
        0,
    )


def read_json_records(path: str | os.PathLike) -> list[Any]:
    """A JSON array file or a JSONL file -> list of raw records, with errors naming the line."""
    path = Path(path)
    if not path.exists():
        raise DataError(str(path), "file not found")
    text = path.read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
        return data
    records = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise DataError(str(path), f"invalid JSON on line {lineno}: {exc.msg}", len(records)) from None
    return records


def load_edit_records(
    path: str | os.PathLike,
    fmt: str | None = None,
    n: int | None = None,
    skip_invalid: bool = False,
    zsre_target: str = "answers",
    report: LoadReport | None = None,
) -> list[EditRecord]:
    """Load, validate and convert edit records from ``path`` (a named data set or a file)."""
    path = resolve_edit_data(path)
    raw = read_json_records(path)
    if not raw:
        raise DataError(str(path), "contains no records")
    if fmt is None:
        fmt = detect_format(raw[0], str(path))
    if fmt not in _PARSERS:
        raise DataError(str(path), f"unknown format {fmt!r}; known: {', '.join(FORMATS)}")
    parser = _PARSERS[fmt]
    out: list[EditRecord] = []
    problems: list[str] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        if n is not None and len(out) >= n:
            break
        try:
            record = parser(_Rec(str(path), index, item), zsre_target=zsre_target)
            if record.case_id in seen:
                raise DataError(str(path), f"duplicate case_id {record.case_id!r}", index, "case_id")
            seen.add(record.case_id)
        except DataError as exc:
            if not skip_invalid:
                raise
            problems.append(str(exc))
            continue
        out.append(record)
    if report is not None:
        report.path, report.fmt, report.total, report.loaded = str(path), fmt, len(raw), len(out)
        report.problems.extend(problems)
    return out


# ----------------------------------------------------------------------------------------------------------
# named data sets in the shared data folder


def shared_data_dir() -> Path:
    """``$EDITDECAY_DATA`` or the ``shared/data`` folder beside (or inside) the repository checkout."""
    env = os.environ.get("EDITDECAY_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        for candidate in (parent / "shared" / "data", parent.parent / "shared" / "data"):
            if (candidate / "counterfact").is_dir():
                return candidate
    return Path.cwd() / ".." / "shared" / "data"


NAMED_EDIT_DATA = {
    "counterfact": "counterfact/counterfact-edit-1k.json",
    "counterfact-10k": "counterfact/counterfact-edit.json",
    "counterfact-train": "counterfact/counterfact-train.json",
    "zsre": "zsre/zsre_mend_train-1k.json",
}


def resolve_edit_data(name_or_path: str | os.PathLike) -> Path:
    text = str(name_or_path)
    if text in NAMED_EDIT_DATA:
        path = shared_data_dir() / NAMED_EDIT_DATA[text]
        if not path.exists():
            raise DataError(str(path), f"data set '{text}' not found; set EDITDECAY_DATA to the shared/data folder")
        return path
    return Path(text)
