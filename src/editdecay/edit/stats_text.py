"""The text second-moment statistics are counted over: documents streamed from local files or the hub.

Why a stream: the reference code counts 100,000 Wikipedia articles (10⁷–10⁸ tokens); holding that text, or
its token ids as Python lists, does not fit in memory. Every source here yields one document at a time and
:class:`WindowStream` cuts token windows from that stream as they are needed; :func:`window_batches` groups
them for the forward passes.

Sources (``mom2_dataset`` entries):

- a named corpus of :data:`editdecay.data.corpora.RAW_TEXT` (``wikitext``, ``wikipedia``: local files);
- a ``.txt`` file: one document per non-empty line (WikiText ``= heading =`` lines skipped);
- a ``.jsonl`` file (streamed line by line) or a ``.json`` array (read whole), each record with a ``text``;
- ``hf:NAME[:CONFIG][@SPLIT]``, e.g. ``hf:wikimedia/wikipedia:20231101.en`` (the reference code's source):
  streamed with the ``datasets`` package where the hub is reachable. ``HF_HUB_OFFLINE=1`` (or
  ``HF_DATASETS_OFFLINE=1``) or an unreachable hub fails at once with a message saying how to point at a
  local file instead; it never waits on the network.

Local sources parse exactly as :func:`editdecay.data.corpora.load_text` does, so the corpus hash (part of
every statistics cache key) is unchanged for the corpora earlier versions read whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from editdecay.data.tokens import special_prefix
from editdecay.errors import DataError

DEFAULT_CORPORA = ("wikitext", "wikipedia")  # the statistics text when none is named (local files)
HF_PREFIX = "hf:"
_HEADING = re.compile(r"=+ .* =+")
LOCAL_HINT = ("point mom2_dataset at a local file instead: a .txt (one document per line), or a .jsonl/.json "
              "of records with a 'text' field (e.g. --set mom2_dataset=/data/wiki.jsonl)")


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def parse_hub_source(source: str) -> tuple[str, str | None, str]:
    """'hf:NAME[:CONFIG][@SPLIT]' -> (name, config, split); split defaults to 'train'."""
    spec = source[len(HF_PREFIX):]
    spec, _, split = spec.partition("@")
    name, _, config = spec.partition(":")
    if not name:
        raise DataError(source, "expected hf:NAME[:CONFIG][@SPLIT], e.g. hf:wikimedia/wikipedia:20231101.en")
    return name, config or None, split or "train"


def _local_path(source: str) -> Path:
    from editdecay.data.corpora import RAW_TEXT
    from editdecay.data.records import shared_data_dir

    path = shared_data_dir() / RAW_TEXT[source] if source in RAW_TEXT else Path(source).expanduser()
    if not path.exists():
        raise DataError(str(path), f"statistics corpus not found (named corpora: {', '.join(RAW_TEXT)}; or a "
                        ".txt/.json/.jsonl file; or hf:NAME[:CONFIG] where the hub is reachable)")
    return path


def _iter_local(path: Path) -> Iterator[str]:
    if path.suffix in (".json", ".jsonl"):
        yield from _iter_json_records(path)
        return
    with open(path, encoding="utf-8") as fh:  # universal newlines, as Path.read_text
        for line in fh:
            line = line.strip()
            if line and not _HEADING.fullmatch(line):
                yield line


def _text_of(path: Path, index: int, raw: Any) -> str:
    if not isinstance(raw, dict):
        raise DataError(str(path), f"expected a JSON object, got {type(raw).__name__}", index)
    value = raw.get("text")
    if value is None:
        raise DataError(str(path), "missing field", index, "text")
    if not isinstance(value, str):
        raise DataError(str(path), f"expected a string, got {type(value).__name__}", index, "text")
    if not value.strip():
        raise DataError(str(path), "is empty", index, "text")
    return value


def _iter_json_records(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8-sig") as fh:
        head = ""
        while True:  # find the first non-space character: '[' is a JSON array, anything else JSONL
            ch = fh.read(1)
            if not ch or not ch.isspace():
                head = ch
                break
        fh.seek(0)
        if head == "[":
            try:
                data = json.load(fh)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
            for index, raw in enumerate(data):
                yield _text_of(path, index, raw)
            return
        index = 0
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(str(path), f"invalid JSON on line {lineno}: {exc.msg}", index) from None
            yield _text_of(path, index, raw)
            index += 1


# ----------------------------------------------------------------------------------------------------------
# the hub


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def check_hub_reachable(source: str, timeout: float = 5.0) -> None:
    """Fail fast (never hang) when the hub is switched off or cannot be reached."""
    for flag in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if _truthy(flag):
            raise DataError(source, f"the Hugging Face hub is switched off ({flag}=1), so this corpus cannot be "
                            f"streamed; {LOCAL_HINT}")
    url = urlparse(_hub_endpoint())
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise DataError(source, f"cannot reach the Hugging Face hub at {host}:{port} ({exc.__class__.__name__}: "
                        f"{exc}); if this machine is offline set HF_HUB_OFFLINE=1 and {LOCAL_HINT}") from None


def _datasets_module(source: str) -> Any:
    try:
        import datasets
    except ImportError:
        raise DataError(source, "streaming a hub corpus needs the 'datasets' package (pip install datasets); "
                        f"or {LOCAL_HINT}") from None
    return datasets


def hub_revision(name: str, source: str) -> str:
    """The dataset's current commit, so the cache key pins the exact data that was counted."""
    from huggingface_hub import HfApi

    try:
        return str(HfApi().dataset_info(name, timeout=30).sha)
    except Exception as exc:  # noqa: BLE001 - any hub failure is reported with the way out
        raise DataError(source, f"cannot read the hub dataset {name!r} ({exc.__class__.__name__}: {exc}); "
                        f"{LOCAL_HINT}") from None


def _iter_hub(source: str, revision: str) -> Iterator[str]:
    name, config, split = parse_hub_source(source)
    datasets = _datasets_module(source)
    ds = datasets.load_dataset(name, config, split=split, streaming=True, revision=revision)
    for index, row in enumerate(ds):
        if "text" not in row:
            raise DataError(source, f"hub records have no 'text' column (columns: {', '.join(row)})", index, "text")
        text = row["text"]
        if isinstance(text, str) and text.strip():
            yield text


# ----------------------------------------------------------------------------------------------------------
# documents and their identity


class Corpus:
    """The named sources, resolved once: iterate :meth:`documents` (round-robin) any number of times."""

    def __init__(self, sources: Sequence[str]):
        self.sources = [str(s) for s in sources]
        if not self.sources:
            raise DataError("<mom2_dataset>", "no statistics corpus named")
        self._revisions: dict[str, str] = {}
        self._paths: dict[str, Path] = {}
        for s in self.sources:
            if s.startswith(HF_PREFIX):
                name, _, _ = parse_hub_source(s)
                check_hub_reachable(s)
                _datasets_module(s)
                self._revisions[s] = hub_revision(name, s)
            else:
                self._paths[s] = _local_path(s)

    def _iter(self, source: str) -> Iterator[str]:
        if source in self._revisions:
            return _iter_hub(source, self._revisions[source])
        return _iter_local(self._paths[source])

    def documents(self) -> Iterator[str]:
        """Documents interleaved round-robin, so a small budget samples every source."""
        iters = [self._iter(s) for s in self.sources]
        while iters:
            alive = []
            for it in iters:
                doc = next(it, None)
                if doc is not None:
                    yield doc
                    alive.append(it)
            iters = alive

    def hash(self) -> str:
        """16 hex digits naming the text: local sources by their documents (as earlier versions did), hub
        sources by name, config, split and commit (hashing the whole dump would mean reading it)."""
        h = hashlib.sha256()
        if not self._revisions:
            n = 0
            for doc in self.documents():
                h.update(doc.encode("utf-8"))
                h.update(b"\x00")
                n += 1
            if n == 0:
                raise DataError(",".join(self.sources), "the statistics corpora hold no text")
            return h.hexdigest()[:16]
        for s in self.sources:
            if s in self._revisions:
                h.update(f"hub\x00{s}#{self._revisions[s]}\x00".encode())
                continue
            h.update(b"local\x00")
            for doc in _iter_local(self._paths[s]):
                h.update(doc.encode("utf-8"))
                h.update(b"\x00")
        return h.hexdigest()[:16]

    def describe(self) -> list[str]:
        return [f"{s}@{self._revisions[s]}" if s in self._revisions else s for s in self.sources]


# ----------------------------------------------------------------------------------------------------------
# token windows


class WindowStream:
    """Token windows cut from the corpus, produced lazily; after iterating, ``counted`` and ``exhausted`` say
    what was used and whether the corpus ran out before the budget.

    tokens mode (``n_samples=None``): the documents (each followed by EOS) are concatenated and cut into
    windows of ``seq_len`` ids (prefix specials such as BOS included) until ``n_tokens`` ids.
    samples mode: one window per document, its first ``seq_len`` ids (prefix included), as the reference code
    truncates each Wikipedia article to the context length; ``n_samples`` documents.
    """

    def __init__(self, tok: Any, corpus: Corpus, seq_len: int, n_tokens: int | None = None,
                 n_samples: int | None = None):
        if (n_tokens is None) == (n_samples is None):
            raise ValueError("give exactly one of n_tokens and n_samples")
        self.tok, self.corpus, self.seq_len = tok, corpus, seq_len
        self.n_tokens, self.n_samples = n_tokens, n_samples
        self.prefix = list(special_prefix(tok))
        self.body = seq_len - len(self.prefix)
        if self.body < 1:
            raise DataError("<mom2_seq_len>", f"seq_len {seq_len} leaves no room for text after the special tokens")
        self.counted_tokens = 0
        self.counted_samples = 0
        self.exhausted = False

    def _ids(self, doc: str) -> list[int]:
        return self.tok(doc, add_special_tokens=False)["input_ids"]

    def __iter__(self) -> Iterator[list[int]]:
        self.counted_tokens = self.counted_samples = 0
        self.exhausted = False
        gen = self._samples() if self.n_samples is not None else self._tokens()
        for win in gen:
            self.counted_tokens += len(win)
            self.counted_samples += 1
            yield win

    def _samples(self) -> Iterator[list[int]]:
        assert self.n_samples is not None
        if self.n_samples <= 0:
            return
        count = 0
        for doc in self.corpus.documents():
            ids = self._ids(doc)[: self.body]
            if not ids:
                continue  # a document with no tokens is not a sample
            yield self.prefix + ids
            count += 1
            if count >= self.n_samples:
                return
        self.exhausted = True

    def _tokens(self) -> Iterator[list[int]]:
        assert self.n_tokens is not None
        eos = self.tok.eos_token_id
        buf: list[int] = []
        total = 0

        def take_size() -> int:
            return min(self.body, self.n_tokens - total - len(self.prefix))

        for doc in self.corpus.documents():
            buf.extend(self._ids(doc))
            if eos is not None:
                buf.append(eos)
            while True:
                take = take_size()
                if take <= 0:
                    return  # budget reached (to within one prefix)
                if len(buf) < take:
                    break
                win = self.prefix + buf[:take]
                del buf[:take]
                total += len(win)
                yield win
        while buf:  # corpus used up: the rest of the text, then stop short of the budget
            take = take_size()
            if take <= 0:
                return
            win = self.prefix + buf[:take]
            del buf[:take]
            total += len(win)
            yield win
        self.exhausted = True


def window_batches(windows: Iterable[list[int]], batch_size: int, pad: bool) -> Iterator[list[list[int]]]:
    """The windows grouped into batches for a forward pass. Token mode: runs of equal-length windows in stream
    order (all but the last are full, so no padding). Samples mode (``pad``): pools of windows sorted by length,
    so padding stays small."""
    if not pad:
        batch: list[list[int]] = []
        for w in windows:
            if batch and (len(w) != len(batch[0]) or len(batch) == batch_size):
                yield batch
                batch = []
            batch.append(w)
        if batch:
            yield batch
        return
    pool: list[list[int]] = []
    for w in windows:
        pool.append(w)
        if len(pool) == batch_size * 32:
            yield from _sorted_chunks(pool, batch_size)
            pool = []
    yield from _sorted_chunks(pool, batch_size)


def _sorted_chunks(pool: list[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    pool = sorted(pool, key=len, reverse=True)
    for lo in range(0, len(pool), batch_size):
        yield pool[lo:lo + batch_size]
