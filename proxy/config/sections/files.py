"""The files a table names: certificates, keys and CA bundles to read, paths to write.

A file to read is looked at before it is opened (a FIFO would wait for a writer); a file to
write is not opened at all (`check` creates nothing): only a path no file can have is refused.
"""

from __future__ import annotations

import os
import stat

import yaml

from proxy.config.certificates import CertificatePair, certificate_names, check_ca_file, check_certificate
from proxy.config.reader import INVALID, Fields, Invalid, Reader
from proxy.errors import describe_os_error


def _path_problem(text: str) -> str | None:
    """Why `text` can name no file, or None."""
    if "\0" in text:
        return "holds a NUL character"
    try:
        os.fsencode(text)
    except UnicodeEncodeError:  # YAML's "\ud800": a character the file system's encoding has no bytes for
        return "holds a lone surrogate, which no file name can"
    return None


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"))
    kinds += ((stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((kind for test, kind in kinds if test(mode)), "not a file")


def path(reader: Reader, node: yaml.Node, what: str) -> str | Invalid:
    """A readable regular file, relative to the configuration file's folder.

    Looked at before it is opened: opening a FIFO waits for a writer, and a device may do
    something on open.
    """
    text = reader.text(node, what)
    if isinstance(text, Invalid):
        return INVALID
    if "\0" in text:
        reader.error(node, f"{what}: cannot read {text!r}: the path holds a NUL character")
        return INVALID
    path = os.path.realpath(reader.base_dir / text)
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            reader.error(node, f"{what}: cannot read {text!r}: not a regular file ({_file_kind(mode)})")
            return INVALID
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))  # readable by us, and never waits
    except OSError as exc:
        reader.error(node, f"{what}: cannot read {text!r}: {describe_os_error(exc)}")
        return INVALID
    return path


def output_path(reader: Reader, node: yaml.Node, what: str) -> str | Invalid:
    """A file to write, relative to the configuration file's folder; `-` is standard output.

    Not opened here: `check` must not create files, and the serving side opens it.
    """
    text = path_text(reader, node, what, "{what}: cannot write {text!r}: the path {problem}")
    if isinstance(text, Invalid):
        return INVALID
    return text if text == "-" else os.path.abspath(reader.base_dir / text)


def path_text(reader: Reader, node: yaml.Node, what: str, refusal: str) -> str | Invalid:
    """The text of a path a file can have; else INVALID, and `refusal` (a format of `what`,
    `text` and the `problem`) reported."""
    text = reader.text(node, what)
    if isinstance(text, Invalid):
        return INVALID
    problem = _path_problem(text)
    if problem is not None:
        reader.error(node, refusal.format(what=what, text=text, problem=problem))
        return INVALID
    return text


def certificate(reader: Reader, node: yaml.Node, fields: Fields, *, served: bool = False) -> CertificatePair | Invalid:
    """cert + key from a mapping, checked to load and to belong together.

    A `served` certificate is shown to clients: the names it is for are read too, for the SNI checks.
    """
    missing = [key for key in ("cert", "key") if key not in fields]
    for key in missing:
        reader.error(node, f"TLS needs both 'cert:' and 'key:' (missing {key!r})")
    cert = path(reader, fields["cert"][1], "cert") if "cert" in fields else INVALID
    key = path(reader, fields["key"][1], "key") if "key" in fields else INVALID
    if isinstance(cert, Invalid) or isinstance(key, Invalid):
        return INVALID
    pair = CertificatePair(cert, key)
    try:
        check_certificate(pair)
        if served:
            reader.names[cert] = certificate_names(cert)
    except ValueError as exc:
        reader.error(fields["cert"][1], f"cert: {exc}")
        return INVALID
    return pair


def ca_file(reader: Reader, node: yaml.Node, what: str) -> str | Invalid:
    found = path(reader, node, what)
    if isinstance(found, Invalid):
        return INVALID
    try:
        check_ca_file(found)
    except ValueError as exc:
        reader.error(node, f"{what}: {exc}")
        return INVALID
    return found
