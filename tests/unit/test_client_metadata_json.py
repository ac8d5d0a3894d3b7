"""Core metadata to JSON: the keys and values ``python -m build --metadata`` prints.

pypa/build serialises ``packaging.metadata.parse_email``'s raw form; these tests
pin the parts an IDE reads (the plural keys, project_urls as an object) and
that the text is exactly ``json.dumps(raw, ensure_ascii=False, indent=2)``.
"""

from __future__ import annotations

import json

from packaging.metadata import parse_email

from buildd_client.metadata_json import metadata_json, metadata_to_json

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


def test_keys_are_pypa_builds() -> None:
    data = metadata_to_json(METADATA.encode())
    assert data["name"] == "sample-pkg"
    assert data["version"] == "1.2.3"
    # The plural keys of packaging's RawMetadata, not PEP 566's field names.
    assert data["classifiers"] == [
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: MIT License",
    ]
    assert data["platforms"] == ["any"]
    assert data["project_urls"] == {
        "Homepage": "https://example.org",
        "Issues": "https://example.org/issues",
    }
    assert data["license_files"] == ["LICENSE", "NOTICE"]
    assert data["dynamic"] == ["license-file"]
    # Split on commas and stripped, the trailing empty item kept, as packaging does.
    assert data["keywords"] == ["build", "daemon", "pep517", ""]
    assert data["requires_dist"] == [
        "packaging>=24",
        'tomli; python_version < "3.11"',
        'pytest; extra == "test"',
    ]
    assert data["description"].startswith("# Sample")
    assert not {"classifier", "platform", "project_url", "license_file"} & set(data)


def test_text_is_pypa_builds_object_in_a_stable_order() -> None:
    raw, _ = parse_email(METADATA.encode())
    text = metadata_json(METADATA.encode())
    # pypa/build's _print_metadata prints the same object the same way...
    assert json.loads(text) == raw
    assert text == json.dumps(json.loads(text), ensure_ascii=False, indent=2)
    assert "Café" in text
    # ... but in an order that does not change from run to run: the spec's.
    assert list(json.loads(text))[:4] == ["metadata_version", "name", "version", "platforms"]
    assert list(json.loads(text))[-2:] == ["dynamic", "license_files"]


def test_a_field_packaging_cannot_parse_is_left_out_as_pypa_build_does() -> None:
    text = "Metadata-Version: 2.1\nName: a\nVersion: 1\nMetadata-Version: 2.2\n"
    data = metadata_to_json(text)
    assert "metadata_version" not in data
    assert data["name"] == "a"
