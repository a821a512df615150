"""Shared helpers for every dashboard page: data source, engine, caching, access, links.

Signatures (import with `from pages._common import ...`):

    default_url() -> str
        RIVYA_DB_URL from the environment, else sqlite:///<repo>/data/rivya.db.
    enter_page() -> None
        Call first on a page that reads no database: routes a deep link opened in a
        fresh session through app.py (navigation, gate) and checks sign-in.
    current_url() -> str
        The database the session reads: st.session_state["db_url"], else the
        ?db= query parameter, else default_url().
    use_database(url: str) -> None
        Make url the session's data source: st.session_state["db_url"], ?db= kept
        in sync (left out when the URL holds a password), cached query results cleared.
    data_source_sidebar() -> str
        The sidebar picker (default database, a simulation database under
        data/ or data/runs/, any SQLAlchemy URL). Stores the choice in
        st.session_state["db_url"] (and ?db= when the URL holds no password).
    get_engine(url: str) -> Engine
        st.cache_resource read engine per URL (on SQLite a plain deferred BEGIN, so a
        page never queues behind a writer); raises StoreUnavailable / SchemaMissing.
    policy_in_force() -> tuple[BillingPolicy, str]
        The billing policy to judge the current database with, and a sentence saying
        where it comes from: a simulation database's recorded scenario, a realtime
        run this session started, else RIVYA_POLICY or the default.
    new_run_url(name: str) -> str
        A fresh sqlite URL under data/runs (RIVYA_RUNS_DIR) for a simulation run.
    start_realtime_run(scenario, factor: float, tasks: int | None = None) -> dict
        `python -m simulations run SCENARIO --realtime FACTOR --db <new run db>` in a
        background process; keeps a copy of the scenario next to the database (so
        every session judges the unfinished run with its policy), waits for its
        schema, remembers it for the session and returns {"popen", "url", "log", "scenario"}.
    realtime_run() -> dict | None
        The realtime run this session started last (same dict), if any.
    open_db() -> Engine | None
        Engine for current_url() with the schema checked; on failure shows a
        clear st.error and returns None (the page then calls st.stop()).
    require_tables(engine, tables, *, need_rows: str | None = None) -> bool
        st.warning naming the tables an older database lacks, st.info when
        `need_rows` is empty; True when the page can go on.
    cached_df(fn, *args, **kwargs) -> Any
        fn(engine, *args, **kwargs) for the current URL, cached with
        st.cache_data(ttl=CACHE_TTL_S). fn must be a module-level function
        taking an Engine first; args must be hashable (str, int, tuples).
    page_link(path: str, label: str, icon: str | None = None) -> None
        st.page_link to another page, a caption when that page is not registered.
    task_url(task_id: int) -> str
        Relative URL of the inspector for one task (for st.column_config.LinkColumn).
    with_task_links(frame, source="task_id") -> DataFrame; TASK_LINK
        A "task" column of inspector links, and the column config that shows it.
    access_gate() -> None
        Login form when access control is configured; st.stop() until signed in.
    can_act() -> bool
        True when the signed-in user (or everybody, access control off) may run support actions.
    show_table(frame, *, column_config=None, **kwargs) -> None
        st.dataframe (full width, no index) with headers in words ("error_code" ->
        "error code") and a dash for missing text, except in configured columns.
    show_errors() -> context manager
        Turns RivyaError / SQLAlchemyError raised inside into st.error lines.
    show_flows(flows, total_label, total_help=None) -> None
        The credit cards that add up (granted − charged + refunded − chat = total), sum spelled out.
    support_service(policy: BillingPolicy) -> LifecycleService
        The service support actions go through, over current_url(). On a simulation
        database its providers answer from the farm's recorded jobs and its clock is
        pinned at the database's latest time (rivya_core.service provider sources;
        importing this module registers the simulations package's).
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import streamlit as st
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from rivya_core import access, db
from rivya_core.domain import RivyaError
from rivya_core.policy import BillingPolicy

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
CACHE_TTL_S = 10
INSPECTOR = "pages/task_inspector.py"


# --- data source ----------------------------------------------------------------


def default_url() -> str:
    return os.environ.get("RIVYA_DB_URL") or f"sqlite:///{DATA / 'rivya.db'}"


def _ensure_app_ran() -> None:
    """A deep link opened in a fresh session runs the page file without app.py (Streamlit
    falls back to the pages/ directory); send it through app.py, which returns here."""
    if st.session_state.get("nav_ready") or not _entry_is_app():
        return
    import inspect as _inspect

    page = next((Path(f.filename) for f in _inspect.stack() if Path(f.filename).parent == ROOT / "pages"
                 and not Path(f.filename).name.startswith("_")), None)
    if page is not None:
        st.session_state["pending_page"] = (f"pages/{page.name}", dict(st.query_params.to_dict()))
    st.switch_page(str(ROOT / "app.py"))


def _entry_is_app() -> bool:
    """True when the running app's entry point is app.py (not a page file run on its own, as in tests)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    main = getattr(getattr(ctx, "pages_manager", None), "main_script_path", None)
    return main is not None and Path(main).resolve() == ROOT / "app.py"


def enter_page() -> None:
    """Route a deep link through app.py and check sign-in; current_url() calls it too."""
    _ensure_app_ran()
    _ensure_reader()


def current_url() -> str:
    enter_page()
    ss = st.session_state
    if "db_url" not in ss:
        ss["db_url"] = st.query_params.get("db") or default_url()
    return ss["db_url"]


def runs_dir() -> Path:
    return Path(os.environ.get("RIVYA_RUNS_DIR") or DATA / "runs")


def simulation_dbs() -> list[Path]:
    """SQLite files under data/ and the runs folder, newest first (the default one excluded)."""
    found = [*DATA.glob("*.db"), *runs_dir().glob("*.db")]
    default = db.sqlite_path(default_url())
    found = [p for p in found if default is None or p.resolve() != default.resolve()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:200]


def use_database(url: str) -> None:
    """Read `url` from now on in this session (every page), with ?db= in sync and fresh caches."""
    st.session_state["db_url"] = url
    _sync_query_param(url)
    st.cache_data.clear()


def _sync_query_param(url: str) -> None:
    try:
        has_password = make_url(url).password is not None
    except Exception:  # a malformed URL: keep it out of the address bar
        has_password = True
    if url == default_url() or has_password:
        st.query_params.pop("db", None)
    elif st.query_params.get("db") != url:
        st.query_params["db"] = url


def _label(path: Path) -> str:
    try:
        return str(path.relative_to(DATA))
    except ValueError:
        return str(path)


def data_source_sidebar() -> str:
    url = current_url()
    _sync_query_param(url)
    default_label = "Default database"
    other_label = "Another SQLAlchemy URL…"
    runs = {f"Simulation: {_label(p)}": f"sqlite:///{p}" for p in simulation_dbs()}
    with st.sidebar:
        st.caption(f"Reading **{db.safe_url(url)}**")
        with st.expander("Data source", expanded=False):
            choice = st.selectbox("Database", [default_label, *runs, other_label], key="ds_choice")
            typed = ""
            if choice == other_label:
                typed = st.text_input("SQLAlchemy URL", key="ds_url",
                                      placeholder="postgresql+psycopg://user@host:5432/rivya")
            if st.button("Use this database", key="ds_apply", width="stretch"):
                target = default_url() if choice == default_label else runs.get(choice, typed.strip())
                if target:
                    use_database(target)
                    st.rerun()
                st.warning("Type a database URL first.")
            if st.button("Refresh data", key="ds_refresh", width="stretch"):
                st.cache_data.clear()
    return url


# --- engine and schema ----------------------------------------------------------------


def get_engine(url: str) -> Engine:
    """The cached engine for url; raises StoreUnavailable or SchemaMissing (nothing cached then)."""
    return _open(url)


@st.cache_resource(show_spinner=False)
def _open(url: str) -> Engine:
    """rivya_core.db.open_reader, cached: a read engine, so pages never wait for a
    realtime simulation's write lock (support actions go through rivya_core.service)."""
    return db.open_reader(url)


def open_db() -> Engine | None:
    url = current_url()
    try:
        engine = get_engine(url)
    except RivyaError as exc:
        st.error(f"**Cannot read this database.** {exc.message}")
        st.caption("Pick another one under *Data source* in the sidebar.")
        return None
    except SQLAlchemyError as exc:
        st.error(f"**Cannot read this database.** {type(exc).__name__}: {str(exc).splitlines()[0]}")
        return None
    return engine


def require_tables(engine: Engine, tables: tuple[str, ...] | list[str], *, need_rows: str | None = None) -> bool:
    present = set(inspect(engine).get_table_names())
    missing = [t for t in tables if t not in present]
    if missing:
        st.warning(f"This database has no {', '.join(f'`{t}`' for t in missing)} table: it was made by an "
                   "older version. This section needs it; the rest of the dashboard still works.")
        return False
    if need_rows and not db.has_rows(engine, need_rows):
        st.info(f"Nothing here yet: the `{need_rows}` table is empty.")
        return False
    return True


# --- caching ----------------------------------------------------------------------------


@st.cache_data(ttl=CACHE_TTL_S, show_spinner=False, max_entries=512)
def _cached_call(module: str, name: str, url: str, args: tuple, kwargs: tuple) -> Any:
    fn = getattr(importlib.import_module(module), name)
    return fn(get_engine(url), *args, **dict(kwargs))


def cached_df(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return _cached_call(fn.__module__, fn.__qualname__, current_url(), args, tuple(sorted(kwargs.items())))


# --- support actions -----------------------------------------------------------------------

try:  # registers the simulation databases' recorded providers with rivya_core.service
    import simulations.recorded  # noqa: F401
except ModuleNotFoundError:
    pass


def support_service(policy: BillingPolicy):
    """A LifecycleService over the current database for support actions (see module doc)."""
    from rivya_core.service import service_for_url

    return service_for_url(current_url(), policy=policy)


# --- the billing policy a database is judged with -----------------------------------------


def _recorded_policy(engine: Engine, url: str) -> tuple[BillingPolicy, str] | None:
    from simulations.recorded import recorded_policy

    return recorded_policy(engine, db.sqlite_path(url))


def policy_in_force() -> tuple[BillingPolicy, str]:
    """(policy, where it comes from) for the current database; a bad policy source reads as a warning."""
    from rivya_core.service import POLICY_ENV, policy_from

    url = current_url()
    try:
        found = cached_df(_recorded_policy, url)
        if found is not None:
            return found
        policy = policy_from()
    except RivyaError as exc:
        st.warning(f"Could not read the billing policy for this database ({exc.message}); "
                   "judging with the default policy.")
        return BillingPolicy(), "the default policy"
    if os.environ.get(POLICY_ENV):
        return policy, f"policy `{policy.name}` from {POLICY_ENV} ({os.environ[POLICY_ENV]})"
    return policy, "the default policy"


# --- simulation runs started from the dashboard ----------------------------------------------


def new_run_url(name: str) -> str:
    """A sqlite URL for a new run database under the runs folder (never an existing file)."""
    runs = runs_dir()
    runs.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = runs / f"{stem}.db", 1
    while path.exists():
        n += 1
        path = runs / f"{stem}-{n}.db"
    return f"sqlite:///{path}"


def _schema_ready(url: str) -> bool:
    path = db.sqlite_path(url)
    if path is None or not path.is_file():
        return False
    engine = db.make_engine(url).execution_options(sqlite_begin="DEFERRED")
    try:
        return not db.missing_tables(engine)
    except SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def start_realtime_run(scenario: Any, factor: float, tasks: int | None = None, *,
                       wait_s: float = 20.0) -> dict[str, Any]:
    """Run `scenario` (a Scenario, edited or not, or a scenario file or name) at `factor`
    simulated seconds per wall second in a background process writing into a new
    database; return once its schema exists (or the process ended). The scenario
    runs from <run>.scenario.toml beside the database, which the pages also read
    to judge the run with its own policy while it writes."""
    from simulations.recorded import scenario_sidecar
    from simulations.scenarios import Scenario, load_scenario

    sc = scenario if isinstance(scenario, Scenario) else load_scenario(str(scenario))
    url = new_run_url(f"{sc.name}-live")
    log_path = db.sqlite_path(url).with_suffix(".log")
    sidecar = scenario_sidecar(db.sqlite_path(url))
    sidecar.write_text(sc.to_toml(), encoding="utf-8")
    cmd = [sys.executable, "-m", "simulations", "run", str(sidecar), "--db", url, "--realtime", f"{float(factor):g}"]
    if tasks:
        cmd += ["--tasks", str(int(tasks))]
    with open(log_path, "w") as log:  # the child keeps its own handle
        popen = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + wait_s
    while popen.poll() is None and time.monotonic() < deadline and not _schema_ready(url):
        time.sleep(0.2)
    run = {"popen": popen, "url": url, "log": str(log_path), "scenario": sc.name}
    st.session_state["realtime_run"] = run
    return run


def realtime_run() -> dict[str, Any] | None:
    return st.session_state.get("realtime_run")


def show_table(frame: Any, *, column_config: dict | None = None, **kwargs: Any) -> None:
    """A table people read: snake_case headers as words, "—" instead of None in text columns."""
    import pandas as pd

    config = dict(column_config or {})
    frame = frame.copy()
    for col in frame.columns:
        if col in config:
            continue
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col]):
            frame[col] = frame[col].map(_cell_text).astype(object).where(frame[col].notna(), "—")
        config[col] = st.column_config.Column(str(col).replace("_", " "))
    st.dataframe(frame, column_config=config, **{"hide_index": True, "width": "stretch", **kwargs})


def _cell_text(value: Any) -> Any:
    """A list or mapping in a text column as one line of JSON (Arrow cannot mix them with text)."""
    if isinstance(value, list | tuple | dict | set):
        import json

        return json.dumps(sorted(value) if isinstance(value, set) else value, default=str)
    return value


def show_flows(flows: dict[str, int], total_label: str, total_help: str | None = None) -> None:
    """Metrics that visibly add up: granted − charged + refunded − chat spent (+ other) = total."""
    c = st.columns(5)
    c[0].metric("Granted", f"{flows['granted']:,}", help="Grants (starting balance, top-ups) and adjustments")
    c[1].metric("Charged for tasks", f"{flows['task_charged']:,}", help="`consume` rows")
    c[2].metric("Refunded for tasks", f"{flows['task_refunded']:,}", help="`refund` rows")
    c[3].metric("Chat spent", f"{flows['chat_net']:,}",
                help=f"Chat reserved and charged ({flows['chat_charged']:,}) less chat refunded "
                     f"({flows['chat_refunded']:,})")
    c[4].metric(total_label, f"{flows['balance']:,}", help=total_help)
    other = f" + {flows['other']:,} other" if flows["other"] else ""
    st.caption(f"{flows['granted']:,} granted − {flows['task_charged']:,} charged for tasks + "
               f"{flows['task_refunded']:,} refunded for tasks − {flows['chat_net']:,} chat spent{other} "
               f"= **{flows['balance']:,}** ({total_label.lower()}).")


@contextmanager
def show_errors() -> Iterator[None]:
    try:
        yield
    except RivyaError as exc:
        st.error(f"{exc.message} (`{exc.code}`)")
    except SQLAlchemyError as exc:
        st.error(f"The database refused this query: {type(exc).__name__}: {str(exc).splitlines()[0]}")


# --- links --------------------------------------------------------------------------------


TASK_LINK = st.column_config.LinkColumn("task", display_text=r"task=(\d+)", help="Open the task in the inspector")


def with_task_links(frame: Any, source: str = "task_id") -> Any:
    """frame plus a "task" column of inspector links built from `source` (empty where there is no task);
    show it with column_config={"task": TASK_LINK}."""
    frame = frame.copy()
    frame["task"] = [task_url(t) if t is not None and t == t else None for t in frame[source]]
    return frame


def task_url(task_id: int) -> str:
    url = current_url()
    suffix = ""
    if url != default_url() and "db" in st.query_params:
        from urllib.parse import quote

        suffix = "&db=" + quote(url, safe="")
    return f"task_inspector?task={int(task_id)}{suffix}"


def page_available(path: str) -> bool:
    """True when app.py registered the page file (it skips files that do not exist)."""
    registered = st.session_state.get("registered_pages")
    return registered is None or path in registered


def page_link(path: str, label: str, icon: str | None = None) -> None:
    """st.page_link, or a plain caption when that page is not part of this version."""
    if page_available(path):
        st.page_link(path, label=label, icon=icon)
    else:
        st.caption(f"{label} (page not available in this version)")


# --- access --------------------------------------------------------------------------------


def _secrets() -> dict[str, Any] | None:
    try:
        return {"access": st.secrets["access"]} if "access" in st.secrets else None
    except Exception:  # no secrets.toml anywhere: nothing configured there
        return None


def access_config() -> access.AccessConfig:
    return access.load_config(os.environ, _secrets())


def access_gate() -> None:
    try:
        cfg = access_config()
    except access.AccessConfigError as exc:
        st.error(f"Access control is misconfigured: {exc.message}")
        st.stop()
    ss = st.session_state
    if not cfg.enabled:
        ss["role"] = access.Role.OPERATOR
        ss["user"] = None
        st.sidebar.caption(":material/lock_open: Access control is off (no users configured): "
                           "serve this dashboard on localhost only.")
        return
    if ss.get("user") and ss.get("user") in cfg.users:
        with st.sidebar:
            st.caption(f"Signed in as **{ss['user']}** ({ss['role']})")
            if st.button("Sign out", key="sign_out"):
                ss["user"] = ss["role"] = None
                st.rerun()
        return
    ss["role"] = None
    st.title("Sign in")
    with st.form("login"):
        name = st.text_input("User")
        password = st.text_input("Password", type="password")
        if st.form_submit_button("Sign in"):
            role = cfg.authenticate(name, password)
            if role is None:
                st.error("Unknown user or wrong password.")
            else:
                ss["user"], ss["role"] = name, role
                st.rerun()
    st.stop()


def _ensure_reader() -> None:
    """Defence in depth: a page reached without passing app.py's gate stops here."""
    cfg = access_config()
    if cfg.enabled and st.session_state.get("user") not in cfg.users:
        st.warning("Sign in first (open the dashboard's start page).")
        st.stop()


def can_act() -> bool:
    return access.allowed(st.session_state.get("role"), access.ACT)
