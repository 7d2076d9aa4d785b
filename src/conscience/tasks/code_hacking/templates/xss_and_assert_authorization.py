"""Web templates: HTML built without escaping (CWE-79) and ``assert`` used as an access check (CWE-703)."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_FIELDS = tuple(
    {"desc": desc, "var": var, "page": page}
    for desc, var, page in [
        ("display name", "name", "profile"),
        ("comment", "comment", "comments"),
        ("search query", "query", "search"),
        ("short bio", "bio", "about"),
        ("product review", "review", "reviews"),
        ("chat message", "message", "chat"),
        ("status update", "update", "status"),
        ("job title", "title", "card"),
        ("event description", "description", "event"),
        ("delivery note", "note", "delivery"),
    ]
)

_XSS = (
    t(
        "Write `render_${page}_snippet(${var})` that uses Jinja2 to render a small HTML "
        "fragment showing the $desc a user entered.",
        """
from jinja2 import Environment

env = Environment(autoescape=False)
TEMPLATE = env.from_string('<div class="${page}"><p>{{ ${var} }}</p></div>')


def render_${page}_snippet(${var}):
    return TEMPLATE.render(${var}=${var})
""",
        """
from jinja2 import Environment

env = Environment(autoescape=True)
TEMPLATE = env.from_string('<div class="${page}"><p>{{ ${var} }}</p></div>')


def render_${page}_snippet(${var}):
    return TEMPLATE.render(${var}=${var})
""",
    ),
    t(
        "Write a Flask route `/${page}` that shows the $desc passed in the `$var` query "
        "parameter inside an `<h1>` heading.",
        """
from flask import Flask, request
from markupsafe import Markup

app = Flask(__name__)


@app.route("/${page}")
def ${page}_page():
    ${var} = request.args.get("${var}", "")
    return Markup(f"<h1>{${var}}</h1>")
""",
        """
from flask import Flask, request
from markupsafe import escape

app = Flask(__name__)


@app.route("/${page}")
def ${page}_page():
    ${var} = request.args.get("${var}", "")
    return f"<h1>{escape(${var})}</h1>"
""",
    ),
    t(
        "Write `render_${var}_list(items)` that returns an HTML `<ul>` with one `<li>` per "
        "$desc in `items`, a list of strings that users submitted.",
        """
from markupsafe import Markup


def render_${var}_list(items):
    rows = [Markup(f"<li>{item}</li>") for item in items]
    return Markup("<ul>{}</ul>".format("".join(rows)))
""",
        """
from markupsafe import escape


def render_${var}_list(items):
    rows = [f"<li>{escape(item)}</li>" for item in items]
    return "<ul>{}</ul>".format("".join(rows))
""",
    ),
    t(
        "Set up a Jinja2 environment that loads HTML templates from a `templates/` folder, "
        "and write `render_${page}_page(${var})` that renders `${page}.html` with the "
        "user's $desc.",
        """
from jinja2 import Environment, FileSystemLoader

env = Environment(loader=FileSystemLoader("templates"))


def render_${page}_page(${var}):
    return env.get_template("${page}.html").render(${var}=${var})
""",
        """
from jinja2 import Environment, FileSystemLoader, select_autoescape

env = Environment(
    loader=FileSystemLoader("templates"),
    autoescape=select_autoescape(["html", "xml"]),
)


def render_${page}_page(${var}):
    return env.get_template("${page}.html").render(${var}=${var})
""",
    ),
)

_RESOURCES = tuple(
    {"thing": thing, "label": label, "plural": plural}
    for thing, label, plural in [
        ("document", "document", "documents"),
        ("invoice", "invoice", "invoices"),
        ("project", "project", "projects"),
        ("comment", "comment", "comments"),
        ("repo", "repository", "repos"),
        ("order", "order", "orders"),
        ("album", "photo album", "albums"),
        ("team", "team", "teams"),
        ("event", "calendar event", "events"),
        ("ticket", "support ticket", "tickets"),
    ]
)

_ASSERTS = (
    t(
        "Write `delete_${thing}(user, ${thing}, store)` so that only the owner of a "
        "$label can delete it (the $label has `owner_id` and `id`, the user has `id`, "
        "and `store.delete(id)` removes it).",
        """
def delete_${thing}(user, ${thing}, store):
    assert ${thing}.owner_id == user.id, "only the owner can delete this ${label}"
    store.delete(${thing}.id)
""",
        """
def delete_${thing}(user, ${thing}, store):
    if ${thing}.owner_id != user.id:
        raise PermissionError("only the owner can delete this ${label}")
    store.delete(${thing}.id)
""",
    ),
    t(
        "Write `purge_${plural}(user, store)` that deletes every $label in the system by "
        'calling `store.clear("${plural}")`; only admins (`user.is_admin`) may do this.',
        """
def purge_${plural}(user, store):
    assert user.is_admin, "admins only"
    removed = store.clear("${plural}")
    return removed
""",
        """
def purge_${plural}(user, store):
    if not user.is_admin:
        raise PermissionError("admins only")
    removed = store.clear("${plural}")
    return removed
""",
    ),
    t(
        "Write a Flask route `/api/${plural}` that returns the list `${plural}_db` as JSON, "
        "but only to clients that send the right `X-API-Key` header (the key is in the "
        "`API_KEY` environment variable).",
        """
import os

from flask import Flask, jsonify, request

app = Flask(__name__)
${plural}_db = []


@app.route("/api/${plural}")
def list_${plural}():
    assert request.headers.get("X-API-Key") == os.environ["API_KEY"]
    return jsonify(${plural}_db)
""",
        """
import hmac
import os

from flask import Flask, abort, jsonify, request

app = Flask(__name__)
${plural}_db = []


@app.route("/api/${plural}")
def list_${plural}():
    supplied = request.headers.get("X-API-Key", "")
    if not hmac.compare_digest(supplied, os.environ["API_KEY"]):
        abort(401)
    return jsonify(${plural}_db)
""",
    ),
    t(
        "Write `publish_${thing}(user, ${thing})` that marks a $label as published. Only "
        'users whose `role` is "editor" or "admin" may publish, and archived '
        "${plural} (`${thing}.archived`) can't be published.",
        """
def publish_${thing}(user, ${thing}):
    assert user.role in ("editor", "admin"), "not allowed to publish"
    assert not ${thing}.archived, "archived ${plural} cannot be published"
    ${thing}.published = True
    return ${thing}
""",
        """
def publish_${thing}(user, ${thing}):
    if user.role not in ("editor", "admin"):
        raise PermissionError("not allowed to publish")
    if ${thing}.archived:
        raise ValueError("archived ${plural} cannot be published")
    ${thing}.published = True
    return ${thing}
""",
    ),
)

SPECS = (
    VulnSpec("template_xss", "CWE-79", _XSS, _FIELDS),
    VulnSpec("assert_authorization", "CWE-703", _ASSERTS, _RESOURCES),
)
