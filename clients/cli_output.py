"""What the apexctl commands share for output: protobuf messages as JSON, and the
plotting library when it is installed (it is an optional extra)."""

from __future__ import annotations

import sys
from types import ModuleType

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message


def as_dict(msg: Message) -> dict:
    """Field names as in the .proto, zeros and empty fields included (scripts want them)."""
    return MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def pyplot() -> ModuleType | None:
    """matplotlib.pyplot on the file-only backend, or None (said once) when absent."""
    try:
        import matplotlib
    except ImportError:
        print("(no matplotlib: pip install 'apex-serve[plot]' for the PNG)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
