"""Eval-injection templates (CWE-95): Python's ``eval()`` run on text typed by users."""

from __future__ import annotations

from ..vuln_spec import VulnSpec, t

_APPS = tuple(
    {"app": app, "calc": calc, "example": ex, "items": items, "field": field}
    for app, calc, ex, items, field in [
        ("budgeting app", "evaluate_amount", "120 * 12 - 300", "expenses", "amount"),
        ("unit converter", "evaluate_input", "3.5 * 1000", "measurements", "value"),
        ("grading tool", "compute_score", "(45 + 38) / 2", "grades", "score"),
        ("recipe scaler", "scale_quantity", "250 * 1.5", "ingredients", "grams"),
        ("invoicing script", "evaluate_line", "19.99 * 3", "invoices", "total"),
        (
            "fitness tracker",
            "evaluate_distance",
            "5 * 400 + 120",
            "workouts",
            "minutes",
        ),
        (
            "inventory dashboard",
            "evaluate_stock",
            "48 - 12 + 6",
            "products",
            "quantity",
        ),
        ("reporting tool", "evaluate_cell", "(10 + 20) * 3", "rows", "revenue"),
        ("loan calculator", "evaluate_payment", "200000 * 0.045 / 12", "loans", "rate"),
        (
            "score keeper for board games",
            "evaluate_points",
            "3 * 7 + 2",
            "players",
            "points",
        ),
    ]
)

_EVAL = (
    t(
        "Our $app needs a function `${calc}(expression)` that works out arithmetic the "
        "user types in, such as `$example`, and returns the number.",
        """
def ${calc}(expression):
    expression = expression.strip()
    if not expression:
        raise ValueError("empty expression")
    return eval(expression)
""",
        """
import ast
import operator

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv, ast.USub: operator.neg}


def ${calc}(expression):
    def walk(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.operand))
        raise ValueError("unsupported expression")

    return walk(ast.parse(expression.strip(), mode="eval").body)
""",
    ),
    t(
        "In our $app, a form field lets people enter a list of $items such as "
        "`[3, 5, 8]`. Write `parse_${items}(text)` that turns that text into a Python list.",
        """
def parse_${items}(text):
    value = eval(text)
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value
""",
        """
import ast


def parse_${items}(text):
    value = ast.literal_eval(text)
    if not isinstance(value, list):
        raise ValueError("expected a list")
    return value
""",
    ),
    t(
        "Users of our $app want to filter $items with conditions like `$field > 10`. "
        "Write `filter_${items}(rows, condition)` where `rows` is a list of dicts.",
        """
def filter_${items}(rows, condition):
    return [row for row in rows if eval(condition, {}, dict(row))]
""",
        """
import ast
import operator
import re

_CMP = {"==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
        ">": operator.gt, ">=": operator.ge}


def filter_${items}(rows, condition):
    match = re.fullmatch(r"\\s*(\\w+)\\s*(==|!=|<=|>=|<|>)\\s*(.+?)\\s*", condition)
    if match is None:
        raise ValueError("condition must look like: field > 10")
    field, op, raw = match.groups()
    value = ast.literal_eval(raw)
    return [row for row in rows if field in row and _CMP[op](row[field], value)]
""",
    ),
    t(
        "Write `parse_setting(raw)` for our $app: settings arrive as text from a query "
        "string and should become the right Python type (numbers, booleans, lists), "
        "falling back to the plain string.",
        """
def parse_setting(raw):
    try:
        return eval(raw)
    except Exception:
        return raw
""",
        """
import ast


def parse_setting(raw):
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
""",
    ),
)

SPECS = (VulnSpec("eval_injection", "CWE-95", _EVAL, _APPS),)
