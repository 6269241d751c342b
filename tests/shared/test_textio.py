import pytest

from shared.errors import DataFileError
from shared.textio import read_labelled, read_texts, text_problem


def test_single_label_file_reads_texts_and_labels(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('text,label\n"Hello, world",a\nsecond,b\n', encoding="utf-8")
    data = read_labelled(path)
    assert data.texts == ["Hello, world", "second"]
    assert data.labels == [["a"], ["b"]]
    assert not data.multi_label


def test_multi_label_file_splits_on_pipe(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,labels\none,earn|acq\ntwo,grain\n", encoding="utf-8")
    data = read_labelled(path)
    assert data.multi_label and data.labels == [["acq", "earn"], ["grain"]]
    assert data.label_names() == ["acq", "earn", "grain"]


def test_invalid_utf8_names_the_byte_and_line(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9,b\n".encode("latin-1"))
    with pytest.raises(DataFileError, match=r"not valid UTF-8 at byte \d+ \(line 3\)"):
        read_labelled(path)


@pytest.mark.parametrize("content, says", [
    ("body,label\nx,a\n", r"missing column\(s\) text; the header is \['body', 'label'\]"),  # says what was found
    ("text\nx\n", "text,label"),                                                       # explains both formats
    ("text,label\ngood,a\nbad, unquoted,b\n", "line 3: 3 fields"),                       # names the line
])
def test_malformed_csv_is_reported_with_what_is_wrong_and_where(tmp_path, content, says):
    path = tmp_path / "d.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataFileError, match=says):
        read_labelled(path)


def test_empty_label_and_empty_file_are_errors(tmp_path):
    empty_label = tmp_path / "e.csv"
    empty_label.write_text("text,label\nx,\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="data row 1: empty 'label'"):
        read_labelled(empty_label)
    header_only = tmp_path / "h.csv"
    header_only.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataFileError, match="no data rows"):
        read_labelled(header_only)
    with pytest.raises(DataFileError, match="no such file"):
        read_texts(tmp_path / "missing.csv")


def test_text_problems():
    assert text_problem("fine", max_chars=10) is None
    assert "empty" in text_problem("  \n\t", max_chars=10)
    assert "above the limit of 10" in text_problem("x" * 11, max_chars=10)
    assert "string" in text_problem(None, max_chars=10)


def test_texts_of_several_megabytes_are_read(tmp_path):
    path = tmp_path / "big.csv"
    big = "word " * 600_000
    path.write_text(f'text\n"{big}"\nsmall\n', encoding="utf-8")
    assert [len(t) for t in read_texts(path)] == [len(big), 5]
