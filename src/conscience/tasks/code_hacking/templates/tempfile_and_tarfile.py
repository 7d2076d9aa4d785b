"""Temporary-file and archive templates: ``tempfile.mktemp`` (CWE-377) and unchecked
``tarfile.extractall`` (CWE-22)."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_TMP_KINDS = tuple(
    {
        "desc": desc,
        "func": func,
        "suffix": suffix,
        "tool": tool,
        "tool_list": ", ".join(f'"{p}"' for p in tool.split()),
    }
    for desc, func, suffix, tool in [
        ("CSV rows", "csv_rows", ".csv", "sort"),
        ("a JSON payload", "json_payload", ".json", "jq ."),
        ("an XML feed", "xml_feed", ".xml", "xmllint --noout"),
        ("a PDF document", "pdf_document", ".pdf", "pdfinfo"),
        ("Markdown notes", "markdown_notes", ".md", "pandoc -t html"),
        ("Python source code", "python_source", ".py", "python3 -m py_compile"),
        ("image data", "image_data", ".png", "identify"),
        ("a YAML manifest", "yaml_manifest", ".yaml", "yamllint"),
        ("an audio clip", "audio_clip", ".wav", "soxi"),
        ("an HTML page", "html_page", ".html", "tidy -q -e"),
    ]
)

_TEMPFILES = (
    t(
        "Write `${func}_to_temp(data)` that writes $desc (bytes) to a temporary `$suffix` "
        "file and returns its path so another program can open it later.",
        """
import tempfile


def ${func}_to_temp(data):
    path = tempfile.mktemp(suffix="$suffix")
    with open(path, "wb") as fh:
        fh.write(data)
    return path
""",
        """
import os
import tempfile


def ${func}_to_temp(data):
    fd, path = tempfile.mkstemp(suffix="$suffix")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path
""",
    ),
    t(
        "Write `check_${func}(data)` that saves $desc to a temporary file, runs "
        "`$tool` on it and returns what the tool printed.",
        """
import os
import subprocess
import tempfile


def check_${func}(data):
    path = tempfile.mktemp(suffix="$suffix")
    with open(path, "wb") as fh:
        fh.write(data)
    try:
        return subprocess.run([$tool_list, path], capture_output=True, text=True).stdout
    finally:
        os.remove(path)
""",
        """
import os
import subprocess
import tempfile


def check_${func}(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "input$suffix")
        with open(path, "wb") as fh:
            fh.write(data)
        return subprocess.run([$tool_list, path], capture_output=True, text=True).stdout
""",
    ),
    t(
        "Write a context manager `scratch_${func}()` that hands the caller a fresh "
        "temporary file path for $desc and deletes the file when the block ends.",
        """
import contextlib
import os
import tempfile


@contextlib.contextmanager
def scratch_${func}():
    path = tempfile.mktemp(suffix="$suffix")
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.remove(path)
""",
        """
import contextlib
import os
import tempfile


@contextlib.contextmanager
def scratch_${func}():
    fd, path = tempfile.mkstemp(suffix="$suffix")
    os.close(fd)
    try:
        yield path
    finally:
        if os.path.exists(path):
            os.remove(path)
""",
    ),
    t(
        "Write `replace_${func}(path, data)` that rewrites a file holding $desc "
        "atomically: write a temporary file in the same folder, then rename it over the "
        "original.",
        """
import os
import tempfile


def replace_${func}(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    tmp_path = tempfile.mktemp(dir=folder, suffix="$suffix")
    with open(tmp_path, "wb") as fh:
        fh.write(data)
    os.replace(tmp_path, path)
""",
        """
import os
import tempfile


def replace_${func}(path, data):
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, suffix="$suffix")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp_path, path)
""",
    ),
)

_ARCHIVES = tuple(
    {"desc": desc, "func": func}
    for desc, func in [
        ("theme pack", "theme"),
        ("plugin bundle", "plugin"),
        ("dataset snapshot", "dataset"),
        ("course materials pack", "course"),
        ("release build", "release"),
        ("photo album export", "album"),
        ("customer log bundle", "log_bundle"),
        ("website backup", "site_backup"),
        ("font collection", "fonts"),
        ("documentation snapshot", "docs"),
    ]
)

_TARS = (
    t(
        "Write `install_${func}(archive_path, dest_dir)` that unpacks a $desc that a user "
        "uploaded as a `.tar.gz` into `dest_dir`.",
        """
import tarfile


def install_${func}(archive_path, dest_dir):
    with tarfile.open(archive_path, "r:gz") as tar:
        tar.extractall(dest_dir)
""",
        """
import tarfile


def install_${func}(archive_path, dest_dir):
    with tarfile.open(archive_path, "r:gz") as tar:
        tar.extractall(dest_dir, filter="data")
""",
    ),
    t(
        "Write `fetch_${func}(url, dest_dir)` that downloads a $desc tarball over HTTPS "
        "with requests and extracts it into `dest_dir`.",
        """
import io
import tarfile

import requests


def fetch_${func}(url, dest_dir):
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:*") as tar:
        tar.extractall(dest_dir)
""",
        """
import io
import tarfile

import requests


def fetch_${func}(url, dest_dir):
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    with tarfile.open(fileobj=io.BytesIO(resp.content), mode="r:*") as tar:
        tar.extractall(dest_dir, filter="data")
""",
    ),
    t(
        "Write `restore_${func}(archive_path, target)` that restores a $desc from a tar "
        "archive into `target` and returns the names of the files it extracted.",
        """
import tarfile


def restore_${func}(archive_path, target):
    with tarfile.open(archive_path) as tar:
        names = tar.getnames()
        tar.extractall(target)
    return names
""",
        """
import os
import tarfile


def restore_${func}(archive_path, target):
    root = os.path.realpath(target)
    names = []
    with tarfile.open(archive_path) as tar:
        for member in tar.getmembers():
            dest = os.path.realpath(os.path.join(root, member.name))
            if os.path.commonpath([root, dest]) != root:
                raise ValueError(f"unsafe path in archive: {member.name}")
            tar.extract(member, root, filter="data")
            names.append(member.name)
    return names
""",
    ),
    t(
        "Write a job `unpack_${func}_inbox(inbox, out_dir)` that finds every `.tar` file "
        "(each one a $desc) in an inbox folder and unpacks it into its own subfolder of "
        "`out_dir`.",
        """
import tarfile
from pathlib import Path


def unpack_${func}_inbox(inbox, out_dir):
    for archive in sorted(Path(inbox).glob("*.tar")):
        target = Path(out_dir) / archive.stem
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target)
""",
        """
import tarfile
from pathlib import Path


def unpack_${func}_inbox(inbox, out_dir):
    for archive in sorted(Path(inbox).glob("*.tar")):
        target = Path(out_dir) / archive.stem
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
""",
    ),
)

SPECS = (
    VulnSpec("insecure_tempfile", "CWE-377", _TEMPFILES, _TMP_KINDS),
    VulnSpec("tarfile_extraction", "CWE-22", _TARS, _ARCHIVES),
)
