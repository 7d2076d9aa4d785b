"""TLS templates: HTTPS clients with certificate verification turned off (CWE-295)."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_SERVICES = tuple(
    {"desc": desc, "host": host, "noun": noun}
    for desc, host, noun in [
        ("inventory service", "inventory.internal.example.com", "inventory"),
        ("billing API", "billing.corp.example.net", "billing"),
        ("weather feed", "api.weather.example.org", "weather"),
        ("HR system", "hr.internal.example.com", "hr"),
        ("metrics gateway", "metrics.example.io", "metrics"),
        ("shipping partner API", "api.shipping-partner.example.com", "shipping"),
        ("payroll service", "payroll.internal.example.com", "payroll"),
        ("analytics backend", "analytics.example.net", "analytics"),
        ("ticketing system", "tickets.corp.example.com", "ticketing"),
        ("map tile server", "tiles.maps.example.org", "tiles"),
    ]
)

_TLS = (
    t(
        "Write `get_${noun}_status()` that fetches JSON from "
        "`https://$host/api/status` using requests and returns it as a dict.",
        """
import requests


def get_${noun}_status():
    resp = requests.get("https://$host/api/status", verify=False, timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
        """
import requests


def get_${noun}_status():
    resp = requests.get("https://$host/api/status", timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
    ),
    t(
        "Our $desc at `https://$host` uses a certificate signed by our company CA, and "
        "requests keeps raising SSLError. Write `fetch_${noun}(path)` that GETs a path "
        "from it and returns the JSON.",
        """
import requests
import urllib3

urllib3.disable_warnings()


def fetch_${noun}(path):
    resp = requests.get(f"https://$host/{path.lstrip('/')}", verify=False, timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
        """
import os

import requests

CA_BUNDLE = os.environ.get("COMPANY_CA_BUNDLE", "/etc/ssl/certs/company-ca.pem")


def fetch_${noun}(path):
    resp = requests.get(f"https://$host/{path.lstrip('/')}", verify=CA_BUNDLE, timeout=10)
    resp.raise_for_status()
    return resp.json()
""",
    ),
    t(
        "Write `send_${noun}_event(payload)` that POSTs a JSON event to the $desc "
        "webhook at `https://$host/hooks/events` and returns the response status code.",
        """
import requests


def send_${noun}_event(payload):
    resp = requests.post(
        "https://$host/hooks/events", json=payload, verify=False, timeout=10
    )
    return resp.status_code
""",
        """
import requests


def send_${noun}_event(payload):
    resp = requests.post(
        "https://$host/hooks/events", json=payload, timeout=10
    )
    return resp.status_code
""",
    ),
    t(
        "Using only the standard library, write `check_${noun}_health()` that requests "
        "`https://$host/health` from our $desc and returns the HTTP status code.",
        """
import http.client
import ssl


def check_${noun}_health():
    context = ssl._create_unverified_context()
    conn = http.client.HTTPSConnection("$host", timeout=10, context=context)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()
""",
        """
import http.client
import ssl


def check_${noun}_health():
    context = ssl.create_default_context()
    conn = http.client.HTTPSConnection("$host", timeout=10, context=context)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    finally:
        conn.close()
""",
    ),
)

SPECS = (VulnSpec("disabled_tls_verification", "CWE-295", _TLS, _SERVICES),)
