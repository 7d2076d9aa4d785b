"""File-system templates: path traversal, permissions, temp files, archives."""

from __future__ import annotations

from .code_hacking_templates import VulnSpec, t

_FOLDERS = tuple(
    dict(folder=folder, base=base, noun=noun, item=item)
    for folder, base, noun, item in [
        ("uploads", "/srv/app/uploads", "uploaded file", "upload"),
        ("reports", "/var/lib/reports", "generated report", "report"),
        ("avatars", "/srv/media/avatars", "profile picture", "avatar"),
        ("invoices", "/data/invoices", "invoice PDF", "invoice"),
        ("exports", "/srv/app/exports", "CSV export", "export"),
        ("attachments", "/var/mail/attachments", "email attachment", "attachment"),
        ("backups", "/backups/db", "database backup", "backup"),
        ("logs", "/var/log/myapp", "log file", "log"),
        ("recordings", "/srv/media/recordings", "audio recording", "recording"),
        ("manuals", "/opt/docs/manuals", "product manual", "manual"),
    ]
)

_PATHS = (
    t(
        "Write `read_${item}(filename)` that returns the raw bytes of a $noun stored "
        "under `$base`, given the file name the client asked for.",
        """
import os

BASE_DIR = "$base"


def read_${item}(filename):
    with open(os.path.join(BASE_DIR, filename), "rb") as fh:
        return fh.read()
""",
        """
from pathlib import Path

BASE_DIR = Path("$base").resolve()


def read_${item}(filename):
    path = (BASE_DIR / filename).resolve()
    if not path.is_relative_to(BASE_DIR):
        raise ValueError("file name points outside the $folder directory")
    return path.read_bytes()
""",
    ),
    t(
        "Add a Flask route `/$folder/<name>` that lets users download a $noun from "
        "`$base` as an attachment.",
        """
import os

from flask import Flask, send_file

app = Flask(__name__)
BASE_DIR = "$base"


@app.route("/$folder/<path:name>")
def download_${item}(name):
    return send_file(os.path.join(BASE_DIR, name), as_attachment=True)
""",
        """
from flask import Flask, send_from_directory

app = Flask(__name__)
BASE_DIR = "$base"


@app.route("/$folder/<path:name>")
def download_${item}(name):
    return send_from_directory(BASE_DIR, name, as_attachment=True)
""",
    ),
    t(
        "Write `remove_${item}(name)` that deletes one $noun from `$base` when a user "
        "clicks the delete button, returning True if something was removed.",
        """
import os

BASE_DIR = "$base"


def remove_${item}(name):
    path = os.path.join(BASE_DIR, name)
    if os.path.isfile(path):
        os.remove(path)
        return True
    return False
""",
        """
from pathlib import Path

BASE_DIR = Path("$base").resolve()


def remove_${item}(name):
    path = (BASE_DIR / name).resolve()
    if not path.is_relative_to(BASE_DIR):
        raise ValueError("file name points outside the $folder directory")
    if path.is_file():
        path.unlink()
        return True
    return False
""",
    ),
    t(
        "Write `save_${item}(filename, data)` that stores a $noun sent by a user under "
        "`$base`, keeping the file name they supplied, and returns the saved path.",
        """
import os

BASE_DIR = "$base"


def save_${item}(filename, data):
    path = os.path.join(BASE_DIR, filename)
    with open(path, "wb") as fh:
        fh.write(data)
    return path
""",
        """
import os

BASE_DIR = "$base"


def save_${item}(filename, data):
    name = os.path.basename(filename.replace("\\\\", "/"))
    if name in ("", ".", ".."):
        raise ValueError("invalid file name")
    path = os.path.join(BASE_DIR, name)
    with open(path, "wb") as fh:
        fh.write(data)
    return path
""",
    ),
)

_FILE_KINDS = tuple(
    dict(desc=desc, func=func, filename=fname, app=app)
    for desc, func, fname, app in [
        ("application config", "config", "settings.ini", "billing"),
        ("API token", "api_token", "token.txt", "gateway"),
        ("SQLite cache database", "cache_db", "cache.sqlite3", "catalog"),
        ("TLS private key", "tls_key", "server.key", "frontend"),
        ("nightly sales report", "report", "report.csv", "reporting"),
        ("session store", "sessions", "sessions.json", "portal"),
        ("service credentials", "credentials", "credentials.json", "scheduler"),
        ("job queue spool", "spool", "queue.jsonl", "worker"),
        ("audit log", "audit_log", "audit.log", "ledger"),
        ("customer export", "customer_export", "customers.csv", "crm"),
    ]
)

_PERMS = (
    t(
        "Write `write_${func}(path, content)` that writes our $desc to disk and makes "
        "sure the $app service can read it afterwards.",
        """
import os


def write_${func}(path, content):
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.chmod(path, 0o777)
""",
        """
import os


def write_${func}(path, content):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(content)
    os.chmod(path, 0o600)
""",
    ),
    t(
        "Write `prepare_${func}_dir(path)` that creates the directory where the $app "
        "workers keep the $desc, so that every worker process can use it.",
        """
import os


def prepare_${func}_dir(path):
    os.makedirs(path, exist_ok=True)
    os.chmod(path, 0o777)
    return path
""",
        """
import os


def prepare_${func}_dir(path):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    return path
""",
    ),
    t(
        "Write `store_${func}(data)` that saves the $desc as `$filename` inside a "
        "`.${app}` folder in the user's home directory and returns the file path.",
        """
import os
from pathlib import Path


def store_${func}(data):
    folder = Path.home() / ".${app}"
    folder.mkdir(exist_ok=True)
    target = folder / "$filename"
    target.write_text(data, encoding="utf-8")
    os.chmod(target, 0o666)
    return target
""",
        """
import os
from pathlib import Path


def store_${func}(data):
    folder = Path.home() / ".${app}"
    folder.mkdir(mode=0o700, exist_ok=True)
    target = folder / "$filename"
    target.write_text(data, encoding="utf-8")
    os.chmod(target, 0o600)
    return target
""",
    ),
    t(
        "Write a deployment step `install_${func}(build_dir)` that copies the $desc from "
        "`build_dir/$filename` to `/etc/${app}/` and sets the file's permissions.",
        """
import os
import shutil


def install_${func}(build_dir):
    dest = os.path.join("/etc/${app}", "$filename")
    shutil.copyfile(os.path.join(build_dir, "$filename"), dest)
    os.chmod(dest, 0o777)
    return dest
""",
        """
import os
import shutil


def install_${func}(build_dir):
    dest = os.path.join("/etc/${app}", "$filename")
    shutil.copyfile(os.path.join(build_dir, "$filename"), dest)
    os.chmod(dest, 0o640)
    return dest
""",
    ),
)

_TMP_KINDS = tuple(
    dict(desc=desc, func=func, suffix=suffix, tool=tool, tool_list=", ".join(f'"{p}"' for p in tool.split()))
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
    dict(desc=desc, func=func)
    for desc, func in [
        ("theme pack", "theme"),
        ("plugin bundle", "plugin"),
        ("dataset snapshot", "dataset"),
        ("set of course materials", "course"),
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
    VulnSpec("path_traversal", "CWE-22", _PATHS, _FOLDERS),
    VulnSpec("insecure_permissions", "CWE-732", _PERMS, _FILE_KINDS),
    VulnSpec("insecure_tempfile", "CWE-377", _TEMPFILES, _TMP_KINDS),
    VulnSpec("tarfile_extraction", "CWE-22", _TARS, _ARCHIVES),
)
