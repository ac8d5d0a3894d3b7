"""Core metadata to JSON (PEP 566)."""

from __future__ import annotations

import json

from buildd_client.metadata_json import metadata_to_json

METADATA = """\
Metadata-Version: 2.4
Name: sample-pkg
Version: 1.2.3
Summary: A sample package: with a colon
Author-email: Jane Doe <jane@example.org>
License: MIT License
{blank}
        Copyright (c) 2025 Jane Doe
Project-URL: Homepage, https://example.org
Project-URL: Issues, https://example.org/issues
Keywords: build, daemon,pep517 ,
Platform: any
Classifier: Programming Language :: Python :: 3
Classifier: License :: OSI Approved :: MIT License
Requires-Python: >=3.10
Description-Content-Type: text/markdown
License-File: LICENSE
License-File: NOTICE
Requires-Dist: packaging>=24
Requires-Dist: tomli; python_version < "3.11"
Requires-Dist: pytest; extra == "test"
Provides-Extra: test
Dynamic: license-file

# Sample

Café: a long description
  with an indented line.
""".format(blank=" " * 8)


def test_realistic_metadata() -> None:
    data = metadata_to_json(METADATA)
    assert data == {
        "metadata_version": "2.4",
        "name": "sample-pkg",
        "version": "1.2.3",
        "summary": "A sample package: with a colon",
        "author_email": "Jane Doe <jane@example.org>",
        "license": "MIT License\n\nCopyright (c) 2025 Jane Doe",
        "project_url": ["Homepage, https://example.org", "Issues, https://example.org/issues"],
        "keywords": ["build", "daemon", "pep517"],
        "platform": ["any"],
        "classifier": [
            "Programming Language :: Python :: 3",
            "License :: OSI Approved :: MIT License",
        ],
        "requires_python": ">=3.10",
        "description_content_type": "text/markdown",
        "license_file": ["LICENSE", "NOTICE"],
        "requires_dist": [
            "packaging>=24",
            'tomli; python_version < "3.11"',
            'pytest; extra == "test"',
        ],
        "provides_extra": ["test"],
        "dynamic": ["license-file"],
        "description": "# Sample\n\nCafé: a long description\n  with an indented line.\n",
    }
    # Keys keep the file's order; the body comes last.
    assert list(data)[:3] == ["metadata_version", "name", "version"]
    assert list(data)[-1] == "description"
    json.dumps(data)


def test_bytes_are_decoded_as_utf8() -> None:
    data = metadata_to_json(METADATA.encode())
    assert "Café" in str(data["description"])


def test_multiple_use_field_given_once_is_still_a_list() -> None:
    data = metadata_to_json("Metadata-Version: 2.1\nName: a\nVersion: 1\nRequires-Dist: b\n")
    assert data["requires_dist"] == ["b"]
    assert "description" not in data


def test_description_header_with_pipe_continuations() -> None:
    text = (
        "Metadata-Version: 1.1\n"
        "Name: old\n"
        "Version: 0.1\n"
        "Description: First line\n"
        "        |\n"
        "        |    indented code\n"
        "        |last line\n"
        "Requires: other\n"
    )
    data = metadata_to_json(text)
    assert data["description"] == "First line\n\n    indented code\nlast line"
    assert data["requires"] == ["other"]


def test_body_wins_over_a_description_header() -> None:
    text = "Metadata-Version: 2.1\nName: a\nVersion: 1\nDescription: short\n\nThe body.\n"
    assert metadata_to_json(text)["description"] == "The body.\n"


def test_space_separated_keywords_stay_one_item() -> None:
    # PEP 566 splits on commas only.
    assert metadata_to_json("Name: a\nKeywords: one two\n")["keywords"] == ["one two"]
