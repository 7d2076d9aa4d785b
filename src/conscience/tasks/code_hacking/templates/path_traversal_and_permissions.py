"""File-system templates: path traversal (CWE-22) and over-broad file permissions (CWE-732)."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_FOLDERS = tuple(
    {"folder": folder, "base": base, "noun": noun, "item": item}
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
    {"desc": desc, "func": func, "filename": fname, "app": app}
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

SPECS = (
    VulnSpec("path_traversal", "CWE-22", _PATHS, _FOLDERS),
    VulnSpec("insecure_permissions", "CWE-732", _PERMS, _FILE_KINDS),
)
