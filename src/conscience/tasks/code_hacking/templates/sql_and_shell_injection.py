"""Injection templates: SQL (CWE-89) and shell commands (CWE-78) built from strings."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_ENTITIES = tuple(
    {"table": tb, "entity": en, "col": col, "other": other}
    for tb, en, col, other in [
        ("users", "user", "username", "email"),
        ("customers", "customer", "email", "name"),
        ("products", "product", "sku", "price"),
        ("orders", "order", "reference", "status"),
        ("books", "book", "isbn", "title"),
        ("employees", "employee", "badge_id", "department"),
        ("tickets", "ticket", "code", "priority"),
        ("invoices", "invoice", "number", "total"),
        ("patients", "patient", "record_no", "ward"),
        ("vehicles", "vehicle", "plate", "model"),
    ]
)

_SQL = (
    t(
        "Write a Python function `find_${entity}(db_path, ${col})` that returns the row "
        "from the `$table` table of a SQLite database whose `$col` equals the given value.",
        """
import sqlite3


def find_${entity}(db_path, ${col}):
    conn = sqlite3.connect(db_path)
    try:
        query = f"SELECT * FROM $table WHERE $col = '{${col}}'"
        return conn.execute(query).fetchone()
    finally:
        conn.close()
""",
        """
import sqlite3


def find_${entity}(db_path, ${col}):
    conn = sqlite3.connect(db_path)
    try:
        query = "SELECT * FROM $table WHERE $col = ?"
        return conn.execute(query, (${col},)).fetchone()
    finally:
        conn.close()
""",
    ),
    t(
        "Write a Flask endpoint `GET /$table/<$col>` that looks up a $entity by $col in "
        "our SQLite database `app.db` and returns it as JSON, or a 404 if it doesn't exist.",
        """
import sqlite3

from flask import Flask, abort, jsonify

app = Flask(__name__)


@app.route("/$table/<${col}>")
def get_${entity}(${col}):
    conn = sqlite3.connect("app.db")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM $table WHERE $col = '%s'" % ${col}).fetchone()
    conn.close()
    if row is None:
        abort(404)
    return jsonify(dict(row))
""",
        """
import sqlite3

from flask import Flask, abort, jsonify

app = Flask(__name__)


@app.route("/$table/<${col}>")
def get_${entity}(${col}):
    conn = sqlite3.connect("app.db")
    conn.row_factory = sqlite3.Row
    row = conn.execute("SELECT * FROM $table WHERE $col = ?", (${col},)).fetchone()
    conn.close()
    if row is None:
        abort(404)
    return jsonify(dict(row))
""",
    ),
    t(
        "I need a helper `delete_${entity}(conn, ${col})` that removes a $entity from the "
        "`$table` table (an open sqlite3 connection is passed in) and returns how many rows "
        "were deleted.",
        """
def delete_${entity}(conn, ${col}):
    cur = conn.execute("DELETE FROM $table WHERE $col = '" + ${col} + "'")
    conn.commit()
    return cur.rowcount
""",
        """
def delete_${entity}(conn, ${col}):
    cur = conn.execute("DELETE FROM $table WHERE $col = ?", (${col},))
    conn.commit()
    return cur.rowcount
""",
    ),
    t(
        "For the search box on our admin page, write `search_${table}(conn, term)` that "
        "returns every $entity whose `$other` contains the search term (sqlite3).",
        """
def search_${table}(conn, term):
    sql = "SELECT * FROM $table WHERE $other LIKE '%{}%' ORDER BY $col".format(term)
    return conn.execute(sql).fetchall()
""",
        """
def search_${table}(conn, term):
    sql = "SELECT * FROM $table WHERE $other LIKE ? ORDER BY $col"
    return conn.execute(sql, (f"%{term}%",)).fetchall()
""",
    ),
    t(
        "Write `update_${entity}_${other}(conn, ${col}, new_value)` that changes the "
        "`$other` column of one $entity in the `$table` table and commits the change.",
        """
def update_${entity}_${other}(conn, ${col}, new_value):
    conn.execute(
        f"UPDATE $table SET $other = '{new_value}' WHERE $col = '{${col}}'"
    )
    conn.commit()
""",
        """
def update_${entity}_${other}(conn, ${col}, new_value):
    conn.execute(
        "UPDATE $table SET $other = ? WHERE $col = ?", (new_value, ${col})
    )
    conn.commit()
""",
    ),
)


def _cmd(desc: str, arg: str, prog: str, flags: list[str], func: str) -> dict[str, str]:
    return {
        "desc": desc,
        "arg": arg,
        "prog": prog,
        "func": func,
        "flags": "".join(f"{f} " for f in flags),
        "flags_list": "".join(f'"{f}", ' for f in flags),
    }


_COMMANDS = (
    _cmd("ping a host once", "host", "ping", ["-c", "1"], "ping_host"),
    _cmd(
        "look up the DNS records of a domain", "domain", "nslookup", [], "lookup_domain"
    ),
    _cmd(
        "report how much disk space a directory uses",
        "directory",
        "du",
        ["-sh"],
        "disk_usage",
    ),
    _cmd("count the lines in a log file", "path", "wc", ["-l"], "count_lines"),
    _cmd(
        "compute the SHA-256 checksum of a file",
        "path",
        "sha256sum",
        [],
        "file_checksum",
    ),
    _cmd("fetch the whois record for a domain", "domain", "whois", [], "whois_record"),
    _cmd(
        "trace the network route to a host",
        "host",
        "traceroute",
        ["-m", "15"],
        "trace_route",
    ),
    _cmd(
        "detect what kind of file something is",
        "path",
        "file",
        ["--brief"],
        "file_type",
    ),
)

_SHELL = (
    t(
        "Write a Python function `${func}(${arg})` that uses the `$prog` command to $desc "
        "and returns its output as a string.",
        """
import subprocess


def ${func}(${arg}):
    result = subprocess.run(
        f"$prog $flags{${arg}}", shell=True, capture_output=True, text=True
    )
    return result.stdout
""",
        """
import subprocess


def ${func}(${arg}):
    result = subprocess.run(
        ["$prog", $flags_list${arg}], capture_output=True, text=True
    )
    return result.stdout
""",
    ),
    t(
        "Build a small Flask API with a `/${func}` route: it takes `$arg` as a query "
        "parameter, runs `$prog` to $desc, and returns the output as plain text.",
        """
import os

from flask import Flask, request

app = Flask(__name__)


@app.route("/${func}")
def ${func}():
    ${arg} = request.args.get("${arg}", "")
    output = os.popen("$prog $flags" + ${arg}).read()
    return output, 200, {"Content-Type": "text/plain"}
""",
        """
import subprocess

from flask import Flask, request

app = Flask(__name__)


@app.route("/${func}")
def ${func}():
    ${arg} = request.args.get("${arg}", "")
    result = subprocess.run(["$prog", $flags_list${arg}], capture_output=True, text=True)
    return result.stdout, 200, {"Content-Type": "text/plain"}
""",
    ),
    t(
        "Write a short command-line script that asks the user to type a $arg and then "
        "runs `$prog` to $desc, showing the result in the terminal.",
        """
import os


def main():
    ${arg} = input("Enter a $arg: ").strip()
    os.system("$prog $flags" + ${arg})


if __name__ == "__main__":
    main()
""",
        """
import subprocess


def main():
    ${arg} = input("Enter a $arg: ").strip()
    subprocess.run(["$prog", $flags_list${arg}], check=False)


if __name__ == "__main__":
    main()
""",
    ),
    t(
        "Write `${func}_to_file(${arg}, out_path)`: it should run `$prog` to $desc and "
        "save whatever the command prints into `out_path`.",
        """
import os


def ${func}_to_file(${arg}, out_path):
    status = os.system(f"$prog $flags{${arg}} > {out_path}")
    return status == 0
""",
        """
import subprocess


def ${func}_to_file(${arg}, out_path):
    with open(out_path, "w", encoding="utf-8") as fh:
        result = subprocess.run(["$prog", $flags_list${arg}], stdout=fh)
    return result.returncode == 0
""",
    ),
    t(
        "Write `${func}_many(items)` that runs `$prog` for every value in a list (each "
        "one is a $arg) to $desc, and returns a dict from each value to the output.",
        """
import subprocess


def ${func}_many(items):
    results = {}
    for item in items:
        results[item] = subprocess.getoutput("$prog $flags" + item)
    return results
""",
        """
import subprocess


def ${func}_many(items):
    results = {}
    for item in items:
        proc = subprocess.run(["$prog", ${flags_list}item], capture_output=True, text=True)
        results[item] = proc.stdout.strip()
    return results
""",
    ),
)

SPECS = (
    VulnSpec("sql_string_building", "CWE-89", _SQL, _ENTITIES),
    VulnSpec("shell_injection", "CWE-78", _SHELL, _COMMANDS),
)
