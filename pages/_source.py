"""The database a session reads: the sidebar picker, ?db= in the address bar, the cached read engine.

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
    The sidebar picker: the default database, the configured sources, a simulation
    database under data/ or data/runs/, and a free-form SQLAlchemy URL where
    rivya_core.access.may_type_url allows it (open mode; operators with allow_any_url).
runs_dir() -> Path
    Where simulation runs started from the dashboard go (RIVYA_RUNS_DIR, else data/runs).
get_engine(url: str) -> Engine
    st.cache_resource read engine per URL (on SQLite a plain deferred BEGIN, so a
    page never queues behind a writer); raises StoreUnavailable / SchemaMissing.
open_db(tables=(), *, need_rows: str | None = None) -> Engine
    Engine for current_url() with the schema checked and `tables` present (and
    `need_rows` not empty); otherwise says why (require_tables) and stops the page.
require_tables(engine, tables, *, need_rows: str | None = None) -> bool
    st.warning naming the tables an older database lacks, st.info when
    `need_rows` is empty; True when the page can go on.
"""

from __future__ import annotations

import os
from pathlib import Path

import streamlit as st
from sqlalchemy import Engine, inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from pages._access import access_config, ensure_reader
from pages._text import plain
from rivya_core import access
from rivya_core.domain import RivyaError
from rivya_core.stores import db

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"


def default_url() -> str:
    return os.environ.get("RIVYA_DB_URL") or f"sqlite:///{DATA / 'rivya.db'}"


def _ensure_app_ran() -> None:
    """A deep link opened in a fresh session runs the page file without app.py (Streamlit
    falls back to the pages/ directory); send it through app.py, which returns here."""
    if st.session_state.get("nav_ready") or not _entry_is_app():
        return
    import inspect as _inspect

    page = next(
        (
            Path(f.filename)
            for f in _inspect.stack()
            if Path(f.filename).parent == ROOT / "pages" and not Path(f.filename).name.startswith("_")
        ),
        None,
    )
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
    ensure_reader()


def current_url() -> str:
    """The session's database (st.session_state["db_url"], else ?db=, else the default), as
    rivya_core.access.choose_source allows it for the signed-in role; a refused one falls back to
    the default database and the sidebar says why."""
    enter_page()
    ss = st.session_state
    requested = ss.get("db_url") or st.query_params.get("db") or default_url()
    try:
        url = access.choose_source(
            requested, ss.get("role"), access_config(), default=default_url(), sim_dirs=(DATA, runs_dir())
        )
    except access.SourceRefused as exc:
        ss["db_refused"] = exc.message
        url = default_url()
    ss["db_url"] = url
    return url


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
    refused = st.session_state.pop("db_refused", None)
    if refused:
        st.warning(f"Reading the default database instead: {plain(refused)}")
    default_label = "Default database"
    other_label = "Another SQLAlchemy URL…"
    cfg = access_config()
    runs = {f"Source: {name}": source for name, source in cfg.sources.items()}
    runs |= {f"Simulation: {_label(p)}": f"sqlite:///{p}" for p in simulation_dbs()}
    typing_allowed = access.may_type_url(st.session_state.get("role"), cfg)
    with st.sidebar:
        st.caption(f"Reading {plain(db.safe_url(url))}")
        with st.expander("Data source", expanded=False):
            choice = st.selectbox(
                "Database", [default_label, *runs, *([other_label] if typing_allowed else [])], key="ds_choice"
            )
            if not typing_allowed:
                st.caption(
                    "The default database, the configured sources and the simulation databases"
                    + (" (free-form URLs: an operator, when allowed)." if cfg.enabled else ".")
                )
            typed = ""
            if choice == other_label:
                typed = st.text_input(
                    "SQLAlchemy URL", key="ds_url", placeholder="postgresql+psycopg://user@host:5432/rivya"
                )
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
    """rivya_core.stores.db.open_reader, cached: a read engine, so pages never wait for a
    realtime simulation's write lock (support actions go through rivya_core.wiring)."""
    return db.open_reader(url)


def open_db(tables: tuple[str, ...] | list[str] = (), *, need_rows: str | None = None) -> Engine:
    """The page's database; when it cannot be read or lacks what the page needs, the page
    says so and stops here."""
    url = current_url()
    try:
        engine = get_engine(url)
    except RivyaError as exc:
        st.error(f"**Cannot read this database.** {plain(exc.message)}")
        st.caption("Pick another one under *Data source* in the sidebar.")
        st.stop()
    except SQLAlchemyError as exc:
        st.error(f"**Cannot read this database.** {type(exc).__name__}: {plain(str(exc).splitlines()[0])}")
        st.stop()
    if (tables or need_rows) and not require_tables(engine, tables, need_rows=need_rows):
        st.stop()
    return engine


def require_tables(engine: Engine, tables: tuple[str, ...] | list[str], *, need_rows: str | None = None) -> bool:
    present = set(inspect(engine).get_table_names())
    missing = [t for t in tables if t not in present]
    if missing:
        st.warning(
            f"This database has no {', '.join(f'`{t}`' for t in missing)} table: it was made by an "
            "older version. This section needs it; the rest of the dashboard still works."
        )
        return False
    if need_rows and not db.has_rows(engine, need_rows):
        st.info(f"Nothing here yet: the `{need_rows}` table is empty.")
        return False
    return True
