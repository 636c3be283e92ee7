"""The one way XML is read here: by a parser that refuses any DTD. Entity declarations
(expansion bombs, external entities) can only come with one, and neither the broker nor a status
XML ever has one. The parser itself decides, in whatever encoding the document is written."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring


class DoctypeRefused(ValueError):
    pass


def parse(data: bytes) -> ET.Element:
    """The document's root; DoctypeRefused for a DTD, ET.ParseError for malformed XML."""
    try:
        root: ET.Element = fromstring(data, forbid_dtd=True)
    except DefusedXmlException:
        raise DoctypeRefused from None
    except ValueError as exc:  # an encoding the parser cannot read, such as UTF-16 without a BOM
        raise ET.ParseError(str(exc)) from None
    return root
