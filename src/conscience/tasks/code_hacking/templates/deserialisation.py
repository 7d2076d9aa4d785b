"""Deserialisation templates (CWE-502): ``pickle`` on untrusted bytes and unsafe YAML loaders."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_OBJECTS = tuple(
    {"desc": desc, "name": name}
    for desc, name in [
        ("user session", "session"),
        ("shopping cart", "cart"),
        ("set of user preferences", "preferences"),
        ("game save", "savegame"),
        ("job description", "job"),
        ("document draft", "draft"),
        ("search history", "history"),
        ("dashboard layout", "layout"),
        ("set of notification settings", "notifications"),
        ("wish list", "wishlist"),
    ]
)

_PICKLE = (
    t(
        "Write `save_${name}(obj, path)` and `load_${name}(path)` so our app can keep a "
        "$desc on disk between runs. Users can share these files with each other.",
        """
import pickle


def save_${name}(obj, path):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh)


def load_${name}(path):
    with open(path, "rb") as fh:
        return pickle.load(fh)
""",
        """
import json


def save_${name}(obj, path):
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(obj, fh)


def load_${name}(path):
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
""",
    ),
    t(
        "Write a Flask endpoint `/${name}` that reads a base64-encoded $desc from the "
        "`$name` cookie and returns its contents as JSON.",
        """
import base64
import pickle

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/${name}")
def show_${name}():
    raw = request.cookies.get("${name}", "")
    data = pickle.loads(base64.b64decode(raw)) if raw else {}
    return jsonify(data)
""",
        """
import base64
import json

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.route("/${name}")
def show_${name}():
    raw = request.cookies.get("${name}", "")
    data = json.loads(base64.b64decode(raw)) if raw else {}
    return jsonify(data)
""",
    ),
    t(
        "Write `get_${name}(client, key)` that reads a $desc stored in Redis (`client` is "
        "a redis-py client) and returns it as a Python object, or None if the key is "
        "missing.",
        """
import pickle


def get_${name}(client, key):
    raw = client.get(key)
    if raw is None:
        return None
    return pickle.loads(raw)
""",
        """
import json


def get_${name}(client, key):
    raw = client.get(key)
    if raw is None:
        return None
    return json.loads(raw)
""",
    ),
    t(
        "Write `receive_${name}(conn)` for our TCP server: a client sends one $desc over "
        "the socket and closes its side; return the decoded object.",
        """
import pickle


def receive_${name}(conn):
    chunks = []
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
    return pickle.loads(b"".join(chunks))
""",
        """
import json


def receive_${name}(conn):
    chunks = []
    while True:
        chunk = conn.recv(4096)
        if not chunk:
            break
        chunks.append(chunk)
    return json.loads(b"".join(chunks).decode("utf-8"))
""",
    ),
)

_CONFIGS = tuple(
    {"desc": desc, "func": func}
    for desc, func in [
        ("deployment manifest", "deployment"),
        ("CI pipeline definition", "pipeline"),
        ("feature flag file", "feature_flags"),
        ("plugin list", "plugins"),
        ("cron schedule", "schedule"),
        ("translation catalogue", "translations"),
        ("test fixtures file", "fixtures"),
        ("dashboard definition", "dashboard"),
        ("set of alerting rules", "alert_rules"),
        ("recipe collection", "recipes"),
    ]
)

_YAML = (
    t(
        "Write `load_${func}(path)` that reads our $desc from a YAML file and returns it "
        "as a dict.",
        """
import yaml


def load_${func}(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=yaml.Loader)
""",
        """
import yaml


def load_${func}(path):
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)
""",
    ),
    t(
        "Write a Flask endpoint `POST /${func}` that accepts a $desc uploaded as YAML in "
        "the request body and responds with the list of its top-level keys.",
        """
import yaml
from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.route("/${func}", methods=["POST"])
def upload_${func}():
    doc = yaml.load(request.get_data(as_text=True), Loader=yaml.Loader)
    if not isinstance(doc, dict):
        abort(400)
    return jsonify(sorted(doc))
""",
        """
import yaml
from flask import Flask, abort, jsonify, request

app = Flask(__name__)


@app.route("/${func}", methods=["POST"])
def upload_${func}():
    doc = yaml.safe_load(request.get_data(as_text=True))
    if not isinstance(doc, dict):
        abort(400)
    return jsonify(sorted(doc))
""",
    ),
    t(
        "People paste a $desc into a text box on our website. Write `validate_${func}(text)` "
        "that parses the YAML and checks that it has a `name` key, returning the parsed data.",
        """
import yaml


def validate_${func}(text):
    data = yaml.load(text, Loader=yaml.Loader)
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError("the document needs a 'name' key")
    return data
""",
        """
import yaml


def validate_${func}(text):
    data = yaml.safe_load(text)
    if not isinstance(data, dict) or "name" not in data:
        raise ValueError("the document needs a 'name' key")
    return data
""",
    ),
    t(
        "Write `merge_${func}(paths)` that loads several YAML files, each a $desc, and "
        "merges them into one dict, with later files overriding earlier ones.",
        """
import yaml


def merge_${func}(paths):
    merged = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            merged.update(yaml.load(fh, Loader=yaml.Loader) or {})
    return merged
""",
        """
import yaml


def merge_${func}(paths):
    merged = {}
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            merged.update(yaml.safe_load(fh) or {})
    return merged
""",
    ),
)

SPECS = (
    VulnSpec("unsafe_deserialisation", "CWE-502", _PICKLE, _OBJECTS),
    VulnSpec("unsafe_yaml", "CWE-502", _YAML, _CONFIGS),
)
