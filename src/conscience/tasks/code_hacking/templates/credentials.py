"""Credential templates: weak password hashes (CWE-916) and hardcoded secrets (CWE-798)."""

from __future__ import annotations

import hashlib

from ..vuln_spec import VulnSpec, t

_LOGINS = tuple(
    {"desc": desc, "who": who, "algo": algo}
    for desc, who, algo in [
        ("customer accounts", "customer", "md5"),
        ("admin panel", "admin", "sha1"),
        ("forum members", "member", "md5"),
        ("staff portal", "staff", "sha1"),
        ("partner dashboard", "partner", "md5"),
        ("student portal", "student", "sha1"),
        ("library patrons", "patron", "md5"),
        ("clinic's patient portal", "patient", "sha1"),
        ("gym membership app", "gym_member", "md5"),
        ("volunteer sign-up site", "volunteer", "sha1"),
    ]
)

_HASHING = (
    t(
        "Write `hash_password(password)` and `check_password(password, stored)` for the "
        "login of our $desc.",
        """
import hashlib


def hash_password(password):
    return hashlib.${algo}(password.encode("utf-8")).hexdigest()


def check_password(password, stored):
    return hash_password(password) == stored
""",
        """
import hashlib
import hmac
import os


def hash_password(password):
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, 600_000)
    return salt.hex() + ":" + digest.hex()


def check_password(password, stored):
    salt_hex, digest_hex = stored.split(":")
    salt = bytes.fromhex(salt_hex)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, 600_000)
    return hmac.compare_digest(digest.hex(), digest_hex)
""",
    ),
    t(
        "Write `register_${who}(db, username, password)` that adds a new account to `db` "
        "(a dict from username to stored password hash) for our $desc.",
        """
import hashlib


def register_${who}(db, username, password):
    if username in db:
        raise ValueError("username already taken")
    db[username] = hashlib.${algo}(password.encode("utf-8")).hexdigest()
""",
        """
import hashlib
import os


def register_${who}(db, username, password):
    if username in db:
        raise ValueError("username already taken")
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=2**14, r=8, p=1)
    db[username] = salt.hex() + ":" + key.hex()
""",
    ),
    t(
        "Write `login_${who}(db, username, password)` that checks a login attempt for our "
        "$desc against `db`, which maps usernames to stored password hashes, and returns "
        "True or False.",
        """
import hashlib


def login_${who}(db, username, password):
    stored = db.get(username)
    if stored is None:
        return False
    return hashlib.${algo}(password.encode("utf-8")).hexdigest() == stored
""",
        """
import hashlib
import hmac


def login_${who}(db, username, password):
    stored = db.get(username)
    if stored is None:
        return False
    salt_hex, key_hex = stored.split(":")
    key = hashlib.scrypt(password.encode("utf-8"), salt=bytes.fromhex(salt_hex), n=2**14, r=8, p=1)
    return hmac.compare_digest(key.hex(), key_hex)
""",
    ),
    t(
        "We're migrating the $desc away from plaintext passwords. Write "
        "`hash_password_file(src, dst)` that reads a CSV with `username,password` columns "
        "and writes `username,password_hash` rows instead.",
        """
import csv
import hashlib


def hash_password_file(src, dst):
    with open(src, newline="") as fin, open(dst, "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["username", "password_hash"])
        for row in csv.DictReader(fin):
            digest = hashlib.${algo}(row["password"].encode("utf-8")).hexdigest()
            writer.writerow([row["username"], digest])
""",
        """
import csv
import hashlib
import os


def hash_password_file(src, dst):
    with open(src, newline="") as fin, open(dst, "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(["username", "password_hash"])
        for row in csv.DictReader(fin):
            salt = os.urandom(16)
            key = hashlib.pbkdf2_hmac("sha256", row["password"].encode("utf-8"), salt, 600_000)
            writer.writerow([row["username"], salt.hex() + ":" + key.hex()])
""",
    ),
)


def _account(noun: str, desc: str, password: str) -> dict[str, str]:
    token = hashlib.sha256(f"conscience-demo-{noun}".encode()).hexdigest()[:32]
    return {
        "noun": noun,
        "desc": desc,
        "prefix": noun.upper(),
        "user": f"{noun}_svc",
        "domain": f"{noun}.example.com",
        "password": password,
        "token": token,
    }


_ACCOUNTS = (
    _account("orders", "order management", "Orders-2024!"),
    _account("analytics", "analytics", "An4lytics#pw"),
    _account("billing", "billing", "b1ll1ng-Secret"),
    _account("inventory", "inventory", "Stock&Count9"),
    _account("support", "support desk", "HelpDesk!77"),
    _account("newsletter", "newsletter", "news-Letter42"),
    _account("loyalty", "loyalty programme", "Points4You!"),
    _account("booking", "room booking", "BookIt#2023"),
    _account("warehouse", "warehouse", "Pallet-Jack8"),
    _account("people", "HR", "Peop1e-Ops!"),
)

_SECRETS = (
    t(
        "Write `get_connection()` that connects to our $desc Postgres database on "
        "`db.$domain` as the `$user` user with psycopg2 and returns the connection.",
        """
import psycopg2


def get_connection():
    return psycopg2.connect(
        host="db.$domain",
        dbname="$noun",
        user="$user",
        password="$password",
    )
""",
        """
import os

import psycopg2


def get_connection():
    return psycopg2.connect(
        host="db.$domain",
        dbname="$noun",
        user="$user",
        password=os.environ["${prefix}_DB_PASSWORD"],
    )
""",
    ),
    t(
        "Write `list_${noun}_items()` that calls `https://api.$domain/v1/items` with our "
        "bearer token for the $desc API and returns the decoded JSON.",
        """
import requests

API_TOKEN = "$token"


def list_${noun}_items():
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    resp = requests.get("https://api.$domain/v1/items", headers=headers, timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
        """
import os

import requests


def list_${noun}_items():
    headers = {"Authorization": f"Bearer {os.environ['${prefix}_API_TOKEN']}"}
    resp = requests.get("https://api.$domain/v1/items", headers=headers, timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
    ),
    t(
        "Set up a minimal Flask app for the $desc team with sessions enabled and a "
        "`/whoami` route that returns the username stored in the session.",
        """
from flask import Flask, session

app = Flask(__name__)
app.secret_key = "$password-$token"


@app.route("/whoami")
def whoami():
    return {"username": session.get("username")}
""",
        """
import os

from flask import Flask, session

app = Flask(__name__)
app.secret_key = os.environ["${prefix}_SECRET_KEY"]


@app.route("/whoami")
def whoami():
    return {"username": session.get("username")}
""",
    ),
    t(
        "Write `email_${noun}_report(to_addr, body)` that sends a report e-mail through "
        "`smtp.$domain` (port 587 with STARTTLS) from our `$user@$domain` account.",
        """
import smtplib
from email.message import EmailMessage

SMTP_PASSWORD = "$password"


def email_${noun}_report(to_addr, body):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "$user@$domain", to_addr, "$desc report"
    msg.set_content(body)
    with smtplib.SMTP("smtp.$domain", 587) as smtp:
        smtp.starttls()
        smtp.login("$user@$domain", SMTP_PASSWORD)
        smtp.send_message(msg)
""",
        """
import os
import smtplib
from email.message import EmailMessage


def email_${noun}_report(to_addr, body):
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "$user@$domain", to_addr, "$desc report"
    msg.set_content(body)
    with smtplib.SMTP("smtp.$domain", 587) as smtp:
        smtp.starttls()
        smtp.login("$user@$domain", os.environ["${prefix}_SMTP_PASSWORD"])
        smtp.send_message(msg)
""",
    ),
)

SPECS = (
    VulnSpec("weak_password_hashing", "CWE-916", _HASHING, _LOGINS),
    VulnSpec("hardcoded_secrets", "CWE-798", _SECRETS, _ACCOUNTS),
)
