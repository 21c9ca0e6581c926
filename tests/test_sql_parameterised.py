"""SQL is parameterised everywhere: no statement text is built from values with Python string tools.

The test reads (``ast``, nothing is imported or run) every ``.py`` under the code location's
packages and fails on any ``.execute(...)``, ``.executemany(...)`` or ``.copy(...)`` call, and any
``psycopg.sql.SQL(...)``, whose statement is built with an f-string that has placeholders, a
``%`` format, ``str.format`` or a ``+`` concatenation involving anything but string literals.
Names are followed to their assignments in the same function and at module level, so
``query = f"... {x}"; cursor.execute(query)`` is caught too. Values go as parameters
(``%s`` / ``%(name)s``); identifiers, which parameters cannot carry, go through
``psycopg.sql.SQL(...).format(sql.Identifier(...))``, which quotes them.

The checker itself is tested on small sources, so a checker that stopped catching anything fails.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("facepipeline", "assets", "sensors", "jobs", "cli", "resources", "schedules")
SQL_METHODS = frozenset({"execute", "executemany", "copy"})


@dataclass(frozen=True)
class Violation:
    path: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call}(...) {self.why}"


def _is_sql_call(node: ast.AST) -> bool:
    """``SQL(...)`` or ``sql.SQL(...)``: psycopg's composable statement."""
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    return (isinstance(func, ast.Name) and func.id == "SQL") or (isinstance(func, ast.Attribute) and func.attr == "SQL")


def _is_composable(node: ast.AST, scope: dict[str, list[ast.expr]] | None = None, seen: frozenset[str] = frozenset()) -> bool:
    """A psycopg.sql object: SQL(...), Identifier(...), Literal(...), Placeholder(...), Composed(...),
    ``.format``/``.join`` of one, or a name only ever bound to one."""
    if isinstance(node, ast.Call):
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("SQL", "Identifier", "Literal", "Placeholder", "Composed"):
            return True
        if isinstance(func, ast.Attribute) and func.attr in ("format", "join"):
            return _is_composable(func.value, scope, seen)
    if isinstance(node, ast.Name) and scope and scope.get(node.id) and node.id not in seen:
        return all(_is_composable(value, scope, seen | {node.id}) for value in scope[node.id])
    return False


class _Checker:
    def __init__(self, tree: ast.Module, path: str) -> None:
        self.path = path
        self.module_assignments = self._assignments(tree.body)
        self.violations: list[Violation] = []

    @staticmethod
    def _assignments(body: list[ast.stmt]) -> dict[str, list[ast.expr]]:
        found: dict[str, list[ast.expr]] = {}
        for statement in body:
            nodes = ast.walk(statement) if not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) else ()
            for node in nodes:
                targets: list[ast.expr] = []
                if isinstance(node, ast.Assign):
                    targets, value = node.targets, node.value
                elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                    targets, value = [node.target], node.value
                    if isinstance(node, ast.AugAssign):
                        value = ast.BinOp(left=node.target, op=node.op, right=node.value)
                for target in targets:
                    if isinstance(target, ast.Name):
                        found.setdefault(target.id, []).append(value)
        return found

    def check(self, tree: ast.Module) -> list[Violation]:
        self._visit(tree, self.module_assignments)
        return self.violations

    def _visit(self, node: ast.AST, scope: dict[str, list[ast.expr]]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                body = child.body if isinstance(child.body, list) else [ast.Expr(child.body)]
                local = self._assignments(body)
                self._visit(child, {**self.module_assignments, **local})
                continue
            if isinstance(child, ast.Call):
                self._check_call(child, scope)
            self._visit(child, scope)

    def _check_call(self, call: ast.Call, scope: dict[str, list[ast.expr]]) -> None:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr in SQL_METHODS:
            statement = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg in ("query", "statement")), None)
            name = f".{func.attr}"
        elif _is_sql_call(call) and call.args:
            statement, name = call.args[0], "sql.SQL"
        else:
            return
        if statement is None:
            return
        why = self._unsafe(statement, scope, set())
        if why:
            self.violations.append(Violation(self.path, call.lineno, name, why))

    def _unsafe(self, node: ast.expr, scope: dict[str, list[ast.expr]], seen: set[str]) -> str | None:
        """Why the statement ``node`` is built unsafely, or None."""
        if isinstance(node, ast.JoinedStr):
            if any(isinstance(part, ast.FormattedValue) for part in node.values):
                return "builds its statement with an f-string"
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) and self._stringish(node.left, scope, seen):
            return "builds its statement with a %-format"
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            operands = self._flatten_add(node)
            if any(self._stringish(o, scope, seen) for o in operands) and not all(self._literal(o, scope, seen) for o in operands):
                return "builds its statement by concatenating strings with non-literals"
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            if not _is_composable(node.func.value, scope, frozenset(seen)):
                return "builds its statement with str.format"
            return None
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "join":
            if not _is_composable(node.func.value, scope, frozenset(seen)):
                return "builds its statement with str.join"
            return None
        if isinstance(node, ast.IfExp):
            return self._unsafe(node.body, scope, seen) or self._unsafe(node.orelse, scope, seen)
        if isinstance(node, ast.Name) and node.id not in seen:
            for value in scope.get(node.id, ()):
                why = self._unsafe(value, scope, seen | {node.id})
                if why:
                    return f"{why} (via {node.id})"
        return None

    @staticmethod
    def _flatten_add(node: ast.expr) -> list[ast.expr]:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return [*_Checker._flatten_add(node.left), *_Checker._flatten_add(node.right)]
        return [node]

    def _stringish(self, node: ast.expr, scope, seen) -> bool:
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.JoinedStr):
            return True
        if isinstance(node, ast.Name):
            # A name being resolved is the statement itself (``q += extra``): a string.
            return node.id in seen or any(self._stringish(v, scope, seen | {node.id}) for v in scope.get(node.id, ()))
        return False

    def _literal(self, node: ast.expr, scope, seen) -> bool:
        """A string literal, or a name only ever bound to literals (or literal concatenations)."""
        if isinstance(node, ast.Constant):
            return isinstance(node.value, str)
        if isinstance(node, ast.JoinedStr):
            return not any(isinstance(part, ast.FormattedValue) for part in node.values)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return all(self._literal(o, scope, seen) for o in self._flatten_add(node))
        if isinstance(node, ast.Name) and node.id in seen:
            return True  # the statement itself; its other bindings are checked on their own
        if isinstance(node, ast.Name) and scope.get(node.id):
            return all(self._literal(v, scope, seen | {node.id}) for v in scope[node.id])
        return False


def check_source(source: str, path: str = "<test>") -> list[Violation]:
    tree = ast.parse(source)
    return _Checker(tree, path).check(tree)


def python_files() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py") if ".venv" not in p.parts)


# -- the codebase ----------------------------------------------------------------------------------


def test_every_sql_statement_in_the_code_location_is_parameterised():
    files = python_files()
    assert len(files) > 50 and any(p.name == "postgres.py" for p in files)  # the walk found the code
    violations = [v for path in files for v in check_source(path.read_text(), str(path.relative_to(REPO)))]
    assert not violations, "SQL built from strings (use %s parameters or psycopg.sql):\n" + "\n".join(map(str, violations))


def test_the_walk_sees_the_real_statements():
    """The checker looks at the calls that matter: the gallery's statements are found (and pass)."""
    source = (REPO / "facepipeline" / "gallery" / "postgres.py").read_text()
    calls = [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in SQL_METHODS]
    assert len(calls) >= 10


# -- the checker itself ---------------------------------------------------------------------------

UNSAFE = {
    "f-string": 'def f(conn, name):\n    conn.execute(f"select * from people where name = \'{name}\'")\n',
    "percent": 'def f(cur, name):\n    cur.execute("select * from people where name = \'%s\'" % name)\n',
    "format": 'def f(cur, name):\n    cur.execute("select * from people where name = \'{}\'".format(name))\n',
    "concatenation": 'def f(cur, name):\n    cur.executemany("delete from people where name = " + name, [])\n',
    "via local name": 'def f(cur, table):\n    query = f"select * from {table}"\n    cur.execute(query, [])\n',
    "via module name": 'COLUMNS = ", ".join(["a", "b"])\nQ = f"select {COLUMNS} from t"\ndef f(cur):\n    cur.execute(Q)\n',
    "augmented": 'def f(cur, extra):\n    q = "select 1"\n    q += extra\n    cur.execute(q)\n',
    "copy": 'def f(cur, table):\n    with cur.copy(f"copy {table} from stdin"):\n        pass\n',
    "keyword": 'def f(cur, name):\n    cur.execute(query=f"select \'{name}\'")\n',
    "sql.SQL of an f-string": 'from psycopg import sql\ndef f(conn, t):\n    conn.execute(sql.SQL(f"select * from {t}"))\n',
    "str.join": 'def f(cur, names):\n    cur.execute(" union ".join(names))\n',
    "conditional": 'def f(cur, t, a):\n    cur.execute("select 1" if a else f"select * from {t}")\n',
}
SAFE = {
    "parameters": 'def f(cur, name):\n    cur.execute("select * from people where name = %s", [name])\n',
    "named parameters": 'def f(cur, name):\n    cur.execute("select %(n)s", {"n": name})\n',
    "literal concatenation": 'Q = "select a, " + "b from t"\ndef f(cur):\n    cur.execute(Q + " where a = %s", [1])\n',
    "f-string without placeholders": 'def f(cur):\n    cur.execute(f"select 1")\n',
    "augmented with a literal": 'def f(cur):\n    q = "select 1"\n    q += " union select 2"\n    cur.execute(q)\n',
    "psycopg.sql": (
        "from psycopg import sql\n"
        "def f(conn, table, cols):\n"
        '    conn.execute(sql.SQL("select {} from {} where id = %s").format(\n'
        '        sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table)), [1])\n'
    ),
    "composed query variable": (
        "from psycopg import sql\n"
        'QUERY = sql.SQL("select * from {}").format(sql.Identifier("people"))\n'
        "def f(cur):\n    cur.execute(QUERY)\n"
    ),
    "not sql": 'def f(pool, job):\n    pool.execute(job)\n    job.execute_in_process(run_config={})\n',
}


@pytest.mark.parametrize("name", UNSAFE)
def test_the_checker_catches_a_statement_built_from_strings(name):
    [violation] = check_source(UNSAFE[name], f"{name}.py")
    assert violation.path == f"{name}.py" and violation.line >= 2


@pytest.mark.parametrize("name", SAFE)
def test_the_checker_passes_parameterised_statements(name):
    assert check_source(SAFE[name]) == []
