"""Reading labelled and unlabelled CSV files, and checking single texts, with errors that say where."""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from shared.errors import DataFileError, InputError, UnknownLabelError

LABEL_SEPARATOR = "|"
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # texts of several MB are legal CSV fields


@dataclass(frozen=True)
class LabelledData:
    """Texts with one label each (single-label) or a list of labels each (multi-label)."""

    texts: list[str]
    labels: list[list[str]]
    multi_label: bool
    source: str

    def label_names(self) -> list[str]:
        return sorted({name for names in self.labels for name in names})


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def text_problem(text: object, *, max_chars: int) -> str | None:
    """Why ``text`` cannot be classified, or None when it can."""
    if not isinstance(text, str):
        return f"text must be a string, got {type(text).__name__}"
    if not text.strip():
        return "empty or whitespace-only text"
    if len(text) > max_chars:
        return f"text has {len(text):,} characters, above the limit of {max_chars:,} (FUSIONQ_MAX_TEXT_CHARS): split it or raise the limit"
    if "\x00" in text:  # Postgres text cannot hold it, and no tokenizer means anything by it
        return f"text contains a NUL character at position {text.index(chr(0))}: remove it"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"text is not valid Unicode at position {exc.start} (a lone surrogate, {text[exc.start]!r}): decode the source properly"
    return None


def text_problems(texts, *, max_chars: int) -> list[tuple[int, str]]:
    """(position, reason) of every text of ``texts`` that cannot be classified."""
    return [(i, p) for i, t in enumerate(texts) if (p := text_problem(t, max_chars=max_chars))]


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataFileError(
            f"{path}: not valid UTF-8 at byte {exc.start} (line {line}): {raw[exc.start:exc.start + 8]!r}. "
            "Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`."
        ) from exc


def read_rows(path: str | Path, *, required: tuple[str, ...]) -> tuple[list[dict[str, str]], list[str]]:
    """Rows of a UTF-8 CSV with a header holding every column in ``required``; (rows, header)."""
    path = Path(path)
    if path.is_dir():
        raise DataFileError(f"{path}: is a directory; give the CSV file inside it")
    if not path.is_file():
        raise DataFileError(f"{path}: no such file")
    reader = csv.DictReader(io.StringIO(_decode(path), newline=""))
    header = list(reader.fieldnames or [])
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:  # csv.DictReader would silently keep the last column of each name
        raise DataFileError(f"{path}: column(s) {', '.join(map(repr, repeated))} appear more than once in the header "
                            f"{header}; rename or drop the copies")
    missing = [c for c in required if c not in header]
    if missing:
        raise DataFileError(
            f"{path}: missing column(s) {', '.join(missing)}; the header is {header or 'empty'}. "
            f"Expected a header line with {', '.join(required)}."
        )
    rows = []
    try:
        for row in reader:
            if None in row:  # more fields than the header names
                raise DataFileError(f"{path}, line {reader.line_num}: {len(header) + len(row[None])} fields, the header has {len(header)}; quote texts that contain commas")
            rows.append(row)
    except csv.Error as exc:
        raise DataFileError(f"{path}, line {reader.line_num}: malformed CSV: {exc}") from exc
    if not rows:
        raise DataFileError(f"{path}: no data rows below the header")
    return rows, header


def read_texts(path: str | Path, *, column: str = "text") -> list[str]:
    """The ``column`` of a CSV, in order. Empty texts are kept; the service marks them failed."""
    return read_texts_and_ids(path, column=column)[0]


def read_texts_and_ids(path: str | Path, *, column: str = "text", id_column: str | None = None,
                       default_id_column: str | None = None) -> tuple[list[str], tuple[str, list[str]] | None]:
    """The texts of ``column`` and the caller's ids: (id column name, ids) from ``id_column`` (required),
    else from ``default_id_column`` when the file has it, else None. The file is read once."""
    rows, header = read_rows(path, required=(column,) if id_column is None else (column, id_column))
    texts = [row[column] or "" for row in rows]
    chosen = id_column or (default_id_column if default_id_column in header and default_id_column != column else None)
    return texts, None if chosen is None else (chosen, [row[chosen] or "" for row in rows])


def read_labelled(path: str | Path) -> LabelledData:
    """A ``text,label`` (single-label) or ``text,labels`` (multi-label, ``|``-joined) CSV."""
    path = Path(path)
    rows, header = read_rows(path, required=("text",))
    if "labels" in header and "label" in header:
        raise DataFileError(f"{path}: both a 'label' and a 'labels' column; keep `label` for single-label "
                            f"or `labels` for {LABEL_SEPARATOR}-joined multi-label data, not both")
    if "labels" in header:
        column, multi = "labels", True
    elif "label" in header:
        column, multi = "label", False
    else:
        raise DataFileError(
            f"{path}: no label column; the header is {header}. Use `text,label` for single-label "
            f"or `text,labels` with {LABEL_SEPARATOR}-joined names for multi-label data."
        )
    texts, labels = [], []
    for number, row in enumerate(rows, start=1):
        value = (row[column] or "").strip()
        names = [n.strip() for n in value.split(LABEL_SEPARATOR)] if multi else [value]
        names = [n for n in names if n]
        if not names:
            raise DataFileError(f"{path}, data row {number}: empty {column!r}")
        texts.append(row["text"] or "")
        labels.append(sorted(set(names)))
    return LabelledData(texts=texts, labels=labels, multi_label=multi, source=str(path))


def check_training_data(data: LabelledData, *, max_chars: int) -> None:
    """Refuse data a classifier cannot be trained on, naming the rows."""
    bad = text_problems(data.texts, max_chars=max_chars)
    if bad:
        shown = "; ".join(f"data row {i + 1}: {problem}" for i, problem in bad[:5])
        raise InputError(f"{data.source}: {len(bad)} unusable text(s) ({shown}). Remove or fix them.")
    names = data.label_names()
    if len(names) < 2 and not data.multi_label:
        raise InputError(f"{data.source}: only one label ({names[0]!r}); a classifier needs at least two")


def check_known_labels(data: LabelledData, labels: list[str]) -> None:
    """Raise :class:`UnknownLabelError` naming labels of ``data`` outside ``labels`` and where they occur."""
    known = set(labels)
    unknown: dict[str, list[int]] = {}
    for row, names in enumerate(data.labels, start=1):
        for name in names:
            if name not in known:
                unknown.setdefault(name, []).append(row)
    if unknown:
        detail = "; ".join(f"{name!r} (data rows {', '.join(map(str, rows[:5]))}{'...' if len(rows) > 5 else ''})"
                           for name, rows in sorted(unknown.items()))
        raise UnknownLabelError(f"{data.source}: label(s) the classifier does not know: {detail}. Known: {', '.join(labels)}")


def as_labelled(data, *, source: str = "data") -> LabelledData:
    """A CSV path, a :class:`LabelledData`, or ``(texts, labels)`` with one label or a list per text."""
    if isinstance(data, LabelledData):
        return data
    if isinstance(data, (str, Path)):
        return read_labelled(data)
    try:
        texts, labels = data
    except (TypeError, ValueError):
        raise InputError(f"{source}: give a CSV path, LabelledData or (texts, labels); got {type(data).__name__}") from None
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise InputError(f"{source}: {len(texts)} texts but {len(labels)} labels")
    multi = any(isinstance(x, (list, tuple, set)) for x in labels)
    rows = [sorted(str(n) for n in x) if isinstance(x, (list, tuple, set)) else [str(x)] for x in labels]
    empty = [i + 1 for i, r in enumerate(rows) if not multi and not r[0].strip()]
    if empty:
        raise InputError(f"{source}: rows {empty[:5]} have an empty label")
    return LabelledData(texts=texts, labels=rows, multi_label=multi, source=source)
