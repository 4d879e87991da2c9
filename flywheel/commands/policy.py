"""`flywheel policy ...`: the operator API from a terminal (list, register, canary, promote, rollback,
retire, history). It talks HTTP to a running gateway, so it works against any deployment and every
change goes through the same checks and audit log as an API call."""

from __future__ import annotations

import json
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    help="Register, weight, promote, roll back and retire policy versions (operator API).",
    no_args_is_help=True,
)

Url = Annotated[
    str | None,
    typer.Option(
        "--url", help="gateway base URL (default: http://FLYWHEEL_HOST:FLYWHEEL_PORT)", show_default=False
    ),
]
Key = Annotated[
    str | None,
    typer.Option(
        "--key", envvar="FLYWHEEL_ADMIN_KEY", show_default=False,
        help="operator key (default: $FLYWHEEL_ADMIN_KEY, else the first of FLYWHEEL_ADMIN_KEYS)",
    ),
]
Reason = Annotated[str | None, typer.Option("--reason", help="why, for the audit log")]


def _fail(message: str) -> NoReturn:
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _call(url: str | None, key: str | None, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One operator-API request; any failure becomes one line on stderr and exit status 1."""
    if url is None or key is None:
        from flywheel.settings import Settings

        settings = Settings()
        url = url or f"http://{settings.host}:{settings.port}"
        key = key or (settings.admin_keys[0] if settings.admin_keys else None)
    if not key:
        _fail("no operator key: pass --key, or set FLYWHEEL_ADMIN_KEY or FLYWHEEL_ADMIN_KEYS")
    try:
        headers = {"Authorization": f"Bearer {key}"}
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=120) as http:
            resp = http.request(method, path, json=body)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach the gateway at {url}: {exc}")
    try:
        payload = resp.json()
    except ValueError:
        payload = None
    if resp.status_code >= 400:
        message = (payload or {}).get("error", {}).get("message") if isinstance(payload, dict) else None
        _fail(message or f"HTTP {resp.status_code}: {resp.text[:200]}")
    return payload


def _pct(weight: float) -> str:
    return f"{weight * 100:.1f}%"


def _versions_table(versions: list[dict[str, Any]]) -> Table:
    table = Table(title="policy versions")
    for column in ("id", "kind", "status", "weight", "served as", "parent", "created", "notes", "metrics"):
        table.add_column(column, overflow="fold")
    style = {"stable": "bold green", "canary": "yellow", "rolled_back": "red", "failed": "red"}
    for v in versions:
        table.add_row(
            v["id"], v["kind"], f"[{style.get(v['status'], 'dim')}]{v['status']}[/]",
            _pct(v["weight"]) if v["status"] in ("stable", "canary") else "-",
            v["served_model_name"], v.get("parent") or "-", v["created_at"][:19].replace("T", " "),
            v.get("notes") or "", json.dumps(v["metrics"]) if v.get("metrics") else "",
        )
    return table


@app.command("list")
def list_versions(url: Url = None, key: Key = None) -> None:
    """Every version with its status and share of traffic."""
    Console().print(_versions_table(_call(url, key, "GET", "/admin/policies")["data"]))


@app.command()
def register(
    kind: Annotated[str, typer.Option("--kind", help="lora | full")],
    path: Annotated[str, typer.Option("--path", help="adapter or checkpoint directory on the gateway host")],
    parent: Annotated[str | None, typer.Option("--parent", help="version it was trained from")] = None,
    notes: Annotated[str | None, typer.Option("--notes")] = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", help="own vLLM base URL (full only)")] = None,
    url: Url = None,
    key: Key = None,
) -> None:
    """Register a new version as a canary at weight 0 (a lora is loaded into vLLM)."""
    body = {"kind": kind, "path": path, "parent": parent, "notes": notes, "endpoint": endpoint}
    version = _call(url, key, "POST", "/admin/policies", {k: v for k, v in body.items() if v is not None})
    Console().print(f"registered [bold]{version['id']}[/] as {version['served_model_name']} (canary, weight 0)")


@app.command()
def canary(
    version_id: Annotated[str, typer.Argument(metavar="ID")],
    weight: Annotated[float, typer.Option("--weight", help="share of traffic, 0..1")],
    url: Url = None,
    key: Key = None,
) -> None:
    """Set a canary's share of traffic; the stable keeps the rest."""
    version = _call(url, key, "POST", f"/admin/policies/{version_id}/weight", {"weight": weight})
    Console().print(f"{version['id']} now gets {_pct(version['weight'])} of traffic")


@app.command()
def serving(
    version_id: Annotated[str, typer.Argument(metavar="ID")],
    best_of_n: Annotated[int | None, typer.Option("--best-of-n", min=1, help="candidates when a request names none")] = None,
    default: Annotated[bool, typer.Option("--default", help="drop the version's own value: use the gateway's")] = False,
    url: Url = None,
    key: Key = None,
) -> None:
    """Set a version's serving defaults (best-of-n when the request names none)."""
    if (best_of_n is None) == (not default):
        _fail("pass --best-of-n K or --default")
    version = _call(url, key, "POST", f"/admin/policies/{version_id}/serving", {"best_of_n": best_of_n})
    value = version["metrics"].get("serving", {}).get("best_of_n")
    Console().print(f"{version['id']}: best-of-n {value if value else 'the gateway default'} when a request names none")


def _action(action: str, done: str) -> Any:
    def command(
        version_id: Annotated[str, typer.Argument(metavar="ID")],
        reason: Reason = None,
        url: Url = None,
        key: Key = None,
    ) -> None:
        body = {"reason": reason} if reason else None
        version = _call(url, key, "POST", f"/admin/policies/{version_id}/{action}", body)
        Console().print(f"{version['id']} {done} (status {version['status']})")

    return command


app.command("promote", help="Make ID the stable; the old stable is retired (promote it again to undo).")(
    _action("promote", "promoted")
)
app.command("rollback", help="Take canary ID out of traffic now (weight 0, rolled_back).")(
    _action("rollback", "rolled back")
)
app.command("retire", help="Retire ID for good (a canary or a rolled-back version).")(_action("retire", "retired"))


def _state(state: dict[str, Any] | None) -> str:
    if not state:
        return "-"
    status = str(state.get("status"))
    return f"{status} {_pct(state.get('weight') or 0.0)}" if status == "canary" else status


@app.command()
def history(
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 50,
    url: Url = None,
    key: Key = None,
) -> None:
    """The audit log, newest first: who changed what, when, from which state to which."""
    entries = _call(url, key, "GET", f"/admin/audit?limit={limit}")["data"]
    table = Table(title="policy audit log")
    for column in ("at", "actor", "action", "version", "from → to", "details"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e["at"][:19].replace("T", " "), e["actor"], e["action"], e["version_id"],
            f"{_state(e['from_state'])} → {_state(e['to_state'])}",
            json.dumps(e["details"]) if e.get("details") else "",
        )
    Console().print(table)
