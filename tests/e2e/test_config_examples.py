"""The shipped examples in config/: each loads and passes `check`, with its own files or fresh ones.

Certificate files an example refers to are generated afresh with trustme in a copy of config/,
so the test does not lean on the example PEMs shipped under config/certs/; the release check
(`cd config && pairproxy check -c FILE`) is run on the shipped files as they are.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import trustme

from proxy.config.certificates import CertificatePair, certificate_names, check_ca_file, check_certificate
from proxy.config.loader import load_config
from proxy.protocol.tls import TlsSession
from proxy.serve.contexts import client_context, server_context
from tests.support import REPOSITORY, run_cli

CONFIG_DIR = REPOSITORY / "config"
EXAMPLES = sorted(CONFIG_DIR.glob("*.yaml"))

_FILE_KEY = re.compile(r"(?<![\w-])(cert|key|ca|client_ca):\s*([^\s,{}\[\]#]+)")
_SNI = re.compile(r"(?<![\w-])sni:\s*(\[[^\]]*\]|\"[^\"]*\"|'[^']*'|[^\s,{}#]+)")


def _uncommented(text: str) -> str:
    return "\n".join(re.sub(r"(^|\s)#.*$", "", line) for line in text.splitlines())


def referenced_files(text: str) -> dict[str, str]:
    """{path as written: 'ca' | 'cert' | 'key'} for every certificate file a YAML file names."""
    found = {}
    for kind, path in _FILE_KEY.findall(_uncommented(text)):
        found[path.strip("\"'")] = "ca" if kind in ("ca", "client_ca") else kind
    return found


def sni_names(text: str) -> list[str]:
    names = []
    for value in _SNI.findall(_uncommented(text)):
        names.extend(name.strip(" \"'") for name in value.strip("[]").split(","))
    return [name for name in names if name]


def generate_certificates(example: Path, folder: Path) -> list[str]:
    """Write fresh trustme files in `folder` for every file `example` names; returns their paths.

    A certificate covers the names of the shipped file it replaces, or else every SNI the
    example routes on; its key is the file with the same stem and `.key`.
    """
    text = example.read_text()
    files = referenced_files(text)
    ca = trustme.CA()
    for path, kind in files.items():
        if kind == "key":
            assert Path(path).with_suffix(".pem").as_posix() in files, f"{example.name}: {path} has no matching .pem"
            continue
        target = folder / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if kind == "ca":
            ca.cert_pem.write_to_path(target)
            continue
        shipped = CONFIG_DIR / path
        names = certificate_names(str(shipped)) if shipped.is_file() else sni_names(text) or ["example.test"]
        issued = ca.issue_cert(*names)
        issued.cert_chain_pems[0].write_to_path(target)
        issued.private_key_pem.write_to_path(target.with_suffix(".key"))
    return sorted(files)


def test_the_file_finder_reads_keys_not_comments():
    text = """\
        tls:
          # ca: certs/not-this.pem
          cert: certs/a.pem   # a comment
          key: "certs/a.key"
          client_ca: certs/clients.pem
          certificates: [{cert: certs/b.pem, key: certs/b.key}]
        routes:
          - match: {sni: [a.test, "*.b.test"]}
          - match: {sni: c.test}
        """
    assert referenced_files(text) == {
        "certs/a.pem": "cert",
        "certs/a.key": "key",
        "certs/clients.pem": "ca",
        "certs/b.pem": "cert",
        "certs/b.key": "key",
    }
    assert sni_names(text) == ["a.test", "*.b.test", "c.test"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_loads_with_fresh_certificates_in_a_copy(example, tmp_path):
    copy = tmp_path / "config"
    shutil.copytree(CONFIG_DIR, copy)
    for path in generate_certificates(example, copy):
        assert (copy / path).read_bytes() != (CONFIG_DIR / path).read_bytes(), f"{path} was not regenerated"
    loaded = load_config(copy / example.name)
    assert loaded.config.listeners
    assert loaded.warnings == ()


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda path: path.name)
def test_every_example_passes_check_from_inside_config(example):
    """The release check: `cd config && pairproxy check -c FILE`, with the files as shipped."""
    result = run_cli(["check", "-c", example.name], cwd=CONFIG_DIR)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{example.name}: OK: ")
    assert "warning" not in result.stderr


def test_the_shipped_example_certificates_say_so_and_work_together():
    """The example PEMs are marked as examples, load, and do what tls-termination.yaml says."""
    certs = CONFIG_DIR / "certs"
    for pem in sorted(certs.glob("*.pem")) + sorted(certs.glob("*.key")):
        assert pem.read_text().startswith("EXAMPLE ONLY, never to be used"), pem.name
    for name in ("ca", "clients-ca"):
        check_ca_file(str(certs / f"{name}.pem"))
    edge, admin, client_cert = (
        CertificatePair(str(certs / f"{name}.pem"), str(certs / f"{name}.key")) for name in ("edge", "admin", "client")
    )
    for pair in (edge, admin, client_cert):
        check_certificate(pair)
    context = server_context(edge, (admin,), client_ca=str(certs / "clients-ca.pem"))
    trusting = client_context(str(certs / "ca.pem"), client_cert=client_cert)
    for server_name in ("admin.example.com", "www.example.com", "example.com"):
        server = TlsSession(context, server_side=True)
        client = TlsSession(trusting, server_side=False, server_hostname=server_name)
        for _ in range(10):  # back to back in memory; verification proves the certificate fits the name
            done = client.handshake(), server.handshake()
            for source, sink in ((client, server), (server, client)):
                if data := source.pending_ciphertext():
                    sink.receive(data)
            if all(done):
                break
        assert client.handshake() and server.handshake()
        assert server.server_name == server_name
        assert server.peer_certificate_presented
