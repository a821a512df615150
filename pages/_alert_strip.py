"""The Overview's alert strip: stuck tasks past k × their model's p95 and degraded providers,
each linking to the Incidents page with its bulk filter prepared (rules: rivya_core.read.alerts).

    alert_strip(policy) -> None
"""

from __future__ import annotations

import streamlit as st

from pages._cache import cached_df
from pages._source import current_url, default_url
from pages._text import plain
from rivya_core.domain import SupportAction
from rivya_core.policy import BillingPolicy
from rivya_core.read import alerts
from rivya_core.support import alert_push

INCIDENTS = "pages/incidents.py"


def _params(alert) -> dict[str, str]:
    params = {"action": alert.action, **alert.filter.to_params()}
    if current_url() != default_url() and "db" in st.query_params:
        params["db"] = current_url()
    return params


def alert_strip(policy: BillingPolicy) -> None:
    found = cached_df(alerts.alerts, policy)
    if not found.count:
        st.success(
            f"No alert: no task running past its model's {alerts.STUCK_K:g} × p95, and no provider far "
            f"above its baseline in the last hour (judged at {found.now:%Y-%m-%d %H:%M} UTC).",
            icon=":material/verified:",
        )
        return
    with st.container(border=True):
        st.markdown(f"**:material/notifications_active: {found.count} alert(s)** at {found.now:%Y-%m-%d %H:%M} UTC")
        pushed = cached_df(alert_push.notice_states)
        for alert in [*found.stuck, *found.degraded]:
            c1, c2 = st.columns([3, 1], vertical_alignment="center")
            kind = "Stuck" if isinstance(alert, alerts.StuckAlert) else "Degraded"
            c1.warning(f"**{kind}:** {plain(alert.message)}", icon=":material/warning:")
            notice = pushed.get(alert_push.alert_key(alert))
            if notice and notice["state"] == alert_push.RAISED and notice["raised_at"]:
                c1.caption(f"Pushed to the alert webhook at {notice['raised_at']:%Y-%m-%d %H:%M} UTC.")
            label = f"Prepare bulk {SupportAction(alert.action).words}"
            c2.page_link(INCIDENTS, label=label, icon=":material/playlist_add_check:", query_params=_params(alert))
