"""The `admin:` section: where the admin socket is made and where the admin HTTP listener binds."""

from __future__ import annotations

import os

import yaml

from proxy.config.checks import ADMIN_SOCKET, OutputFile
from proxy.config.reader import INVALID, Invalid, Reader, Section
from proxy.config.schema import AdminConfig
from proxy.config.sections.files import path_text

MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the final NUL


def admin(reader: Reader, node: yaml.Node, what: str) -> AdminConfig | Invalid:
    return reader.built(node, reader.mapping(node, what, ADMIN.keys), ADMIN, AdminConfig)


def socket_path(reader: Reader, node: yaml.Node, what: str) -> str | Invalid:
    """Where the admin socket is to be made, relative to the configuration file's folder, made
    absolute; one of the files the table writes."""
    text = path_text(reader, node, what, "{what}: {text!r} {problem}")
    if isinstance(text, Invalid):
        return INVALID
    path = os.path.abspath(reader.base_dir / text)
    if len(os.fsencode(path)) > MAX_SOCKET_PATH:
        reader.error(node, f"{what}: {path!r} is too long for a UNIX socket (at most {MAX_SOCKET_PATH} bytes)")
        return INVALID
    reader.outputs.append(OutputFile(ADMIN_SOCKET, path, reader.place(node)))
    return path


ADMIN = Section({"socket": socket_path, "http": lambda reader, node, key: reader.address(node, key, listener=True)})
