#!/usr/bin/env python3
"""Evaluate every PromQL expression of the Grafana dashboards against a live Prometheus.

    python3 tests/monitoring/check_dashboards.py --prometheus http://127.0.0.1:9090 \
        grafana/dashboards [more.json ...] [--var job=tgstack-gateway] [--json]

Every panel target, annotation and template-variable query of a Prometheus datasource is
extracted, Grafana variables are substituted (the dashboard's current values, `.*` for "All",
fixed values for `$__rate_interval` & co.), and each expression is sent to `/api/v1/query`
(and `/api/v1/query_range` for range targets). Any error — a parse error, an unknown
function, a many-to-many match, an unsubstituted variable — fails the run (exit status 1).
Empty results are reported but are not errors (a metric may not have been touched yet).

Standard library only: it runs on a server with just python3 (testinfra copies it there) as
well as locally.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Values of Grafana's built-in variables used when checking.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "30s",
    "__interval_ms": "30000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
    "atan2",
    "start",
    "end",
}


@dataclass
class Query:
    dashboard: str
    where: str
    expr: str
    range: bool = False
    kind: str = "expr"  # expr | label_values


@dataclass
class Result:
    query: Query
    ok: bool
    series: int = 0
    error: str = ""
    skipped: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


# --- extraction -------------------------------------------------------------------------------


def _is_prometheus(datasource: Any, default: bool = True) -> bool:
    if datasource is None:
        return default
    if isinstance(datasource, str):
        return datasource.lower() in {"prometheus", "${datasource}", "$datasource", "-- mixed --"}
    ds_type = str(datasource.get("type", "prometheus"))
    return ds_type == "prometheus" or ds_type.startswith("$")


def _walk_panels(panels: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _walk_panels(panel.get("panels", []) or [])


def variable_values(dashboard: dict[str, Any], overrides: dict[str, str]) -> dict[str, str]:
    """Value of each template variable as a string usable inside PromQL."""
    values: dict[str, str] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var.get("name")
        if not name:
            continue
        if name in overrides:
            values[name] = overrides[name]
            continue
        all_value = var.get("allValue") or ".*"
        current = (var.get("current") or {}).get("value")
        if current is None and var.get("options"):
            current = var["options"][0].get("value")
        if current is None:
            current = var.get("query") if var.get("type") in {"constant", "textbox"} else None
        if isinstance(current, list):
            items = [all_value if v == "$__all" else str(v) for v in current]
            values[name] = items[0] if len(items) == 1 else "(" + "|".join(items) + ")"
        elif current == "$__all" or current is None:
            values[name] = all_value
        else:
            values[name] = str(current)
    return values


def substitute(expr: str, values: dict[str, str]) -> str:
    merged = {**values, **BUILTINS}
    # ${name}, ${name:format}, [[name]], $name — longest names first ($job before $j).
    for name in sorted(merged, key=len, reverse=True):
        value = merged[name]
        expr = re.sub(r"\$\{" + re.escape(name) + r"(?::[^}]*)?\}", lambda _m, v=value: v, expr)
        expr = expr.replace(f"[[{name}]]", value)
        expr = re.sub(r"\$" + re.escape(name) + r"(?![A-Za-z0-9_])", lambda _m, v=value: v, expr)
    return expr


def _variable_query(var: dict[str, Any]) -> str | None:
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query")
    if not query and var.get("definition"):
        query = var.get("definition")
    return query if isinstance(query, str) and query.strip() else None


def extract_queries(
    dashboard: dict[str, Any], name: str, overrides: dict[str, str] | None = None
) -> list[Query]:
    """Every Prometheus expression of one dashboard, variables substituted."""
    values = variable_values(dashboard, overrides or {})
    queries: list[Query] = []
    for panel in _walk_panels(dashboard.get("panels", [])):
        panel_ds = panel.get("datasource")
        for target in panel.get("targets", []) or []:
            if not _is_prometheus(target.get("datasource") or panel_ds):
                continue
            expr = target.get("expr")
            if not expr or target.get("hide"):
                continue
            title = panel.get("title") or f"panel {panel.get('id')}"
            queries.append(
                Query(
                    dashboard=name,
                    where=f"{title} [{target.get('refId', '?')}]",
                    expr=substitute(expr, values),
                    range=bool(target.get("range", not target.get("instant", False))),
                )
            )
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr") and _is_prometheus(annotation.get("datasource"), default=False):
            queries.append(
                Query(
                    name,
                    f"annotation {annotation.get('name')}",
                    substitute(annotation["expr"], values),
                    range=True,
                )
            )
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query" or not _is_prometheus(var.get("datasource")):
            continue
        query = _variable_query(var)
        if not query:
            continue
        query = substitute(query, values)
        where = f"variable ${var.get('name')}"
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query, re.S)
        if m:
            queries.append(Query(name, where, f"count by ({m.group(2)}) ({m.group(1)})"))
            continue
        m = re.fullmatch(r"\s*label_values\(\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
        if m:
            queries.append(Query(name, where, m.group(1), kind="label_values"))
            continue
        m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query, re.S)
        if m:
            queries.append(Query(name, where, m.group(1)))
            continue
        if re.fullmatch(r"\s*metrics\(.*\)\s*", query):
            continue
        queries.append(Query(name, where, query))
    return queries


def load_dashboards(paths: Iterable[str | Path]) -> list[tuple[str, dict[str, Any]]]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        files.extend(sorted(path.glob("*.json")) if path.is_dir() else [path])
    if not files:
        raise SystemExit("no dashboard JSON files found")
    return [(f.stem, json.loads(f.read_text(encoding="utf-8"))) for f in files]


# --- metric names (static checks) -------------------------------------------------------------


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (a conservative tokeniser, not a full parser)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", text):
        token, call = m.group(1), m.group(2)
        if call or token in PROMQL_WORDS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", token):
            continue
        names.add(token)
    return names


# --- evaluation -------------------------------------------------------------------------------


def _api(base: str, path: str, params: dict[str, str], timeout: float) -> dict[str, Any]:
    data = urllib.parse.urlencode(params).encode()
    url = base.rstrip("/") + path
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"--prometheus must be an http(s) URL, got {base!r}")
    request = urllib.request.Request(  # noqa: S310 (scheme checked above)
        url,
        data=data if params else None,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return json.loads(response.read().decode())
    except urllib.error.HTTPError as exc:  # Prometheus answers 400/422 with a JSON error
        body = exc.read().decode(errors="replace")
        try:
            return json.loads(body)
        except json.JSONDecodeError:
            return {"status": "error", "errorType": f"http {exc.code}", "error": body[:300]}


def evaluate(base: str, query: Query, timeout: float = 10.0) -> Result:
    if "$" in query.expr:
        return Result(query, ok=False, error=f"unsubstituted variable in: {query.expr}")
    if query.kind == "label_values":
        answer = _api(base, f"/api/v1/label/{query.expr}/values", {}, timeout)
        ok = answer.get("status") == "success"
        return Result(query, ok, len(answer.get("data") or []), "" if ok else str(answer))
    answer = _api(base, "/api/v1/query", {"query": query.expr}, timeout)
    if answer.get("status") != "success":
        return Result(query, False, error=f"{answer.get('errorType')}: {answer.get('error')}")
    data = answer.get("data", {})
    result = data.get("result", [])
    series = len(result) if isinstance(result, list) else 1
    if query.range:
        now = time.time()
        ranged = _api(
            base,
            "/api/v1/query_range",
            {"query": query.expr, "start": f"{now - 600:.3f}", "end": f"{now:.3f}", "step": "30"},
            timeout,
        )
        if ranged.get("status") != "success":
            return Result(
                query,
                False,
                series,
                error=f"range: {ranged.get('errorType')}: {ranged.get('error')}",
            )
        series = max(series, len(ranged.get("data", {}).get("result", [])))
    return Result(query, True, series)


def check(
    base: str, paths: Iterable[str | Path], overrides: dict[str, str] | None = None
) -> list[Result]:
    results = []
    for name, dashboard in load_dashboards(paths):
        for query in extract_queries(dashboard, name, overrides):
            results.append(evaluate(base, query))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="dashboard JSON files or directories")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="override a template variable",
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    overrides = dict(v.split("=", 1) for v in args.var)
    results = check(args.prometheus, args.paths, overrides)
    failed = [r for r in results if not r.ok]
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "dashboard": r.query.dashboard,
                        "where": r.query.where,
                        "expr": r.query.expr,
                        "ok": r.ok,
                        "series": r.series,
                        "error": r.error,
                    }
                    for r in results
                ],
                indent=2,
            )
        )
    else:
        for r in results:
            status = "ok  " if r.ok else "FAIL"
            detail = f"{r.series} series" if r.ok else r.error
            print(f"{status} {r.query.dashboard} / {r.query.where}: {detail}")
            if not r.ok:
                print(f"     expr: {r.query.expr}")
        empty = sum(1 for r in results if r.ok and r.series == 0)
        print(
            f"{len(results) - len(failed)} passed, {len(failed)} failed"
            f" ({empty} returned no series)"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
