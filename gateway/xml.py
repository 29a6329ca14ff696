"""S3's XML: building response documents and parsing the few request bodies S3 takes."""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import Any

from .errors import MalformedXML

NS = "http://s3.amazonaws.com/doc/2006-03-01/"
CONTENT_TYPE = "application/xml"
_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'


class Node:
    """A tiny builder: `Node("A", xmlns=NS).add("B", "text")` and `.child("C")` for nesting."""

    def __init__(self, tag: str, **attrs: str):
        self.element = ET.Element(tag, attrs)

    def add(self, tag: str, text: Any = None) -> Node:
        child = ET.SubElement(self.element, tag)
        if text is not None:
            child.text = _text(text)
        return self

    def add_all(self, fields: Iterable[tuple[str, Any]]) -> Node:
        for tag, text in fields:
            self.add(tag, text)
        return self

    def child(self, tag: str) -> Node:
        node = Node.__new__(Node)
        node.element = ET.SubElement(self.element, tag)
        return node

    def render(self) -> bytes:
        return _DECLARATION + ET.tostring(self.element, encoding="utf-8", xml_declaration=False)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if text.isascii() and text.isprintable():  # nearly every key and message: ~0.1 µs
        return text
    # XML 1.0 has no way to carry most control characters (not even as references), and a
    # key or message holding one would make the whole document unreadable to the client.
    # (translate costs ~2 µs a string: a listing page has thousands of them.)
    return text.translate(_NOT_XML)


_NOT_XML = dict.fromkeys([*range(0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0xFFFE, 0xFFFF,
                          *range(0xD800, 0xE000)], "\ufffd")


def timestamp(ns: int) -> str:
    """ISO 8601 with milliseconds, as S3 lists it: 2009-10-12T17:50:30.000Z."""
    moment = datetime.datetime.fromtimestamp(ns / 1e9, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def error_document(code: str, message: str, resource: str, request_id: str,
                   extra: dict[str, str]) -> bytes:
    node = Node("Error").add("Code", code).add("Message", message)
    node.add_all(extra.items())
    return node.add("Resource", resource).add("RequestId", request_id).render()


def parse(body: bytes) -> ET.Element:
    """Parse a request body; namespaces are dropped from tags. expat (>= 2.4) refuses entity
    expansion bombs; bodies are size-limited before they get here."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError:
        raise MalformedXML() from None
    for element in root.iter():
        if isinstance(element.tag, str) and element.tag.startswith("{"):
            element.tag = element.tag.split("}", 1)[1]
    return root


def parse_delete(body: bytes, limit: int = 1000
                 ) -> tuple[list[bytes], bool, dict[bytes, str]]:
    """DeleteObjects: (keys, quiet, {key: ETag} of the objects to delete only if their ETag
    is that one: a conditional delete, as If-Match on DeleteObject)."""
    root = parse(body)
    if root.tag != "Delete":
        raise MalformedXML()
    quiet = (root.findtext("Quiet") or "false").strip().lower() == "true"
    keys = []
    etags = {}
    for obj in root.findall("Object"):
        key = obj.findtext("Key")
        if key is None:
            raise MalformedXML()
        keys.append(key.encode(errors="surrogateescape"))
        etag = obj.findtext("ETag")
        if etag is not None:
            etags[keys[-1]] = etag.strip()
    if not keys or len(keys) > limit:
        raise MalformedXML(f"a Delete request names 1 to {limit} objects")
    return keys, quiet, etags


def parse_location_constraint(body: bytes) -> str | None:
    """CreateBucket's optional CreateBucketConfiguration."""
    if not body.strip():
        return None
    root = parse(body)
    if root.tag != "CreateBucketConfiguration":
        raise MalformedXML()
    return (root.findtext("LocationConstraint") or "").strip() or None
