//! The console's HTML pages: login, the tenant list, the day view and the call page, with
//! POST forms for the operator's actions. Templates live in `templates/` and are compiled into
//! the binary; autoescaping is on for every `.html` template.

// Handlers return a ready `Response` as the early-exit error: idiomatic for axum, and the size of
// an error on a page request costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use minijinja::context;
use serde::Deserialize;

use super::auth::{LOGIN_COOKIE, SESSION_COOKIE, Session, cookie, random_token, set_cookie};
use super::{Action, ActionResult, ConsoleState, view};
use crate::gateway::connect::ConnectService;
use crate::tenant::Tenant;

pub(super) fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("tenants.html", include_str!("templates/tenants.html")),
        ("day.html", include_str!("templates/day.html")),
        ("call.html", include_str!("templates/call.html")),
        ("message.html", include_str!("templates/message.html")),
        ("operations.html", include_str!("templates/operations.html")),
    ] {
        env.add_template(name, source).expect("console templates compile");
    }
    env.add_filter("urlencode_path", |s: String| urlencode(&s));
    env
}

fn render(state: &ConsoleState, name: &str, ctx: minijinja::Value) -> Response {
    render_status(state, StatusCode::OK, name, ctx)
}

fn render_status(state: &ConsoleState, status: StatusCode, name: &str, ctx: minijinja::Value) -> Response {
    match state.templates.get_template(name).and_then(|t| t.render(ctx)) {
        Ok(html) => {
            let mut r = (status, Html(html)).into_response();
            let h = r.headers_mut();
            // No framing (clickjacking on the action buttons), no caching of call data.
            h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert(
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"),
            );
            r
        }
        Err(e) => {
            tracing::error!(error = %e, template = name, "console template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn message(state: &ConsoleState, status: StatusCode, session: Option<&Session>, title: &str, text: &str) -> Response {
    let (operator, csrf) = session.map(|s| (s.operator.as_str(), s.csrf.as_str())).unzip();
    render_status(state, status, "message.html", context! {title, text, operator, csrf})
}

fn session(state: &ConsoleState, headers: &HeaderMap) -> Option<Session> {
    cookie(headers, SESSION_COOKIE).and_then(|t| state.operators.session(t))
}

fn to_login() -> Response {
    Redirect::to("/console/login").into_response()
}

/// The tenant if this operator may see it; otherwise the same 404 as a missing tenant.
fn tenant_of(state: &ConsoleState, s: &Session, tenant: &str) -> Result<Arc<Tenant>, Response> {
    match state.core.tenants.by_id(tenant) {
        Some(t) if s.may_see(tenant) => Ok(t.clone()),
        _ => Err(message(state, StatusCode::NOT_FOUND, Some(s), "Not found", "There is no such tenant or call.")),
    }
}

/// The signed-in operator and the tenant of a page (the login page when signed out, 404 when the
/// operator may not see the tenant).
fn page_tenant(state: &ConsoleState, headers: &HeaderMap, tenant: &str) -> Result<(Session, Arc<Tenant>), Response> {
    let s = session(state, headers).ok_or_else(to_login)?;
    let t = tenant_of(state, &s, tenant)?;
    Ok((s, t))
}

/// `GET /console`: the operator's tenants (straight to the day view when there is one).
pub(super) async fn home(State(state): State<Arc<ConsoleState>>, headers: HeaderMap) -> Response {
    let Some(s) = session(&state, &headers) else {
        return to_login();
    };
    if let [only] = s.tenants.as_slice() {
        return Redirect::to(&format!("/console/t/{only}/calls")).into_response();
    }
    let tenants: Vec<_> = s
        .tenants
        .iter()
        .filter_map(|id| state.core.tenants.by_id(id))
        .map(|t| context! {id => t.id(), name => t.config.name})
        .collect();
    render(&state, "tenants.html", context! {tenants, operator => s.operator, csrf => s.csrf})
}

/// `GET /console/login`
pub(super) async fn login_form(State(state): State<Arc<ConsoleState>>) -> Response {
    login_page(&state, StatusCode::OK, None)
}

fn login_page(state: &ConsoleState, status: StatusCode, error: Option<&str>) -> Response {
    let token = random_token();
    let mut r = render_status(
        state,
        status,
        "login.html",
        context! {csrf => token, error, enabled => state.operators.enabled()},
    );
    if let Ok(v) = HeaderValue::from_str(&set_cookie(LOGIN_COOKIE, &token, 600, state.secure_cookies)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

#[derive(Deserialize)]
pub(super) struct LoginForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
}

/// `POST /console/login`: the form's CSRF token must equal the login cookie's.
pub(super) async fn login(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    use subtle::ConstantTimeEq;
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or_default();
    if expected.is_empty() || !bool::from(expected.as_bytes().ct_eq(form.csrf.as_bytes())) {
        return login_page(&state, StatusCode::FORBIDDEN, Some("The form expired; please sign in again."));
    }
    match state.operators.login(form.username.trim(), &form.password).await {
        Some((token, s)) => {
            tracing::info!(operator = %s.operator, "operator logged in");
            let ttl = s.expires_at.duration_since(state.core.clock.now()).as_secs();
            let mut r = Redirect::to("/console").into_response();
            for c in [
                set_cookie(SESSION_COOKIE, &token, ttl, state.secure_cookies),
                set_cookie(LOGIN_COOKIE, "", 0, state.secure_cookies),
            ] {
                if let Ok(v) = HeaderValue::from_str(&c) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            r
        }
        None => {
            tracing::warn!("console login refused");
            login_page(&state, StatusCode::UNAUTHORIZED, Some("Wrong username or password."))
        }
    }
}

#[derive(Deserialize)]
pub(super) struct CsrfForm {
    #[serde(default)]
    csrf: String,
}

/// The session behind a POST, if its CSRF token matches; otherwise the response to send.
fn post_session(state: &ConsoleState, headers: &HeaderMap, form: &CsrfForm) -> Result<Session, Response> {
    let Some(s) = session(state, headers) else {
        return Err(message(state, StatusCode::FORBIDDEN, None, "Signed out", "Your session ended; sign in again."));
    };
    if !s.csrf_ok(&form.csrf) {
        return Err(message(
            state,
            StatusCode::FORBIDDEN,
            Some(&s),
            "Refused",
            "This form is not valid any more; reload the page.",
        ));
    }
    Ok(s)
}

/// `POST /console/logout`
pub(super) async fn logout(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(r) = post_session(&state, &headers, &form) {
        return r;
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        state.operators.logout(token);
    }
    let mut r = to_login();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", 0, state.secure_cookies)) {
        r.headers_mut().append(header::SET_COOKIE, v);
    }
    r
}

/// `GET /console/t/{tenant}/calls?date=YYYY-MM-DD` (default: yesterday in the tenant's zone).
pub(super) async fn day(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, tenant) = match page_tenant(&state, &headers, &tenant) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let tz = &tenant.config.time_zone;
    let date = match q.get("date").filter(|d| !d.is_empty()).map(|d| d.parse::<jiff::civil::Date>()) {
        None => view::yesterday(state.core.clock.now(), tz),
        Some(Ok(d)) => d,
        Some(Err(_)) => {
            return message(&state, StatusCode::BAD_REQUEST, Some(&s), "Bad date", "Dates look like 2026-11-22.");
        }
    };
    let calls = match view::day(&state.core.store, &tenant.config, date).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "day view query failed");
            return message(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(&s),
                "Error",
                "The calls could not be read.",
            );
        }
    };
    let counts: HashMap<&str, usize> = calls.iter().fold(HashMap::new(), |mut m, c| {
        *m.entry(c.status_label).or_default() += 1;
        m
    });
    let prev = date.yesterday().ok().map(|d| d.to_string());
    let next = date.tomorrow().ok().map(|d| d.to_string());
    render(
        &state,
        "day.html",
        context! {
            tenant => context!{id => tenant.id(), name => tenant.config.name, zone => tenant.config.time_zone_name},
            date => date.to_string(),
            weekday => date.strftime("%A").to_string(),
            prev, next, calls, counts,
            alerts => state.alerts.open_incidents(tenant.id()),
            operator => s.operator, csrf => s.csrf, several => s.tenants.len() > 1,
            reauthorize => tenant.config.crm.auth == "oauth",
            crm_vendor => tenant.config.crm.vendor,
        },
    )
}

/// `GET /console/t/{tenant}/operations`: rate budgets with backlog and drain ETA, and the
/// reconciliation lists with the button or link that resolves each entry.
pub(super) async fn operations(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path(tenant): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use crate::observe::rate_limits::{for_tenant, human_secs};
    let (s, tenant) = match page_tenant(&state, &headers, &tenant) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let read = async {
        Ok::<_, crate::store::StoreError>((
            for_tenant(&state.core, &tenant).await?,
            super::reconcile::reconcile(&state.core, &tenant).await?,
        ))
    };
    let (accounts, r) = match read.await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "operations page query failed");
            return message(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(&s),
                "Error",
                "The page could not be read.",
            );
        }
    };
    let accounts: Vec<_> = accounts
        .iter()
        .map(|a| {
            let mut v = serde_json::to_value(a).unwrap_or_default();
            v["eta"] = a.drain_eta_secs.filter(|_| a.backlog > 0).map(human_secs).into();
            v["oldest_age"] = a.oldest_age_secs.map(|s| human_secs(s as f64)).into();
            v
        })
        .collect();
    render(
        &state,
        "operations.html",
        context! {
            tenant => context!{id => tenant.id(), name => tenant.config.name, zone => tenant.config.time_zone_name},
            accounts => minijinja::Value::from_serialize(&accounts), r,
            operator => s.operator, csrf => s.csrf,
            notice => match q.get("done").map(String::as_str) {
                Some("kept_crm") => Some("Conflict settled: the person's value stays."),
                Some("applied_ai") => Some("Conflict settled: the AI's value was written to the CRM."),
                _ => None,
            },
            crm_vendor => tenant.config.crm.vendor,
        },
    )
}

/// `GET /console/t/{tenant}/calls/{id}`
pub(super) async fn call(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path((tenant, call_id)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (s, tenant) = match page_tenant(&state, &headers, &tenant) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match state.call_detail(&tenant.config, &call_id).await {
        Ok(Some(detail)) => {
            let date = detail.summary.started_at.get(..10).unwrap_or_default().to_owned();
            let notice = match q.get("done").map(String::as_str) {
                Some("resync") => Some("Re-sync queued."),
                Some("replay") => Some("Dead letters queued for replay."),
                Some("approve") => Some("Plan approved: it is being written."),
                Some("reject") => Some("Plan rejected: nothing will be written."),
                Some("undo") => Some("Undone: see the audit trail for what was restored and what was left alone."),
                Some("nothing") => Some("Nothing to do: no step was waiting for that action."),
                _ => None,
            };
            render(
                &state,
                "call.html",
                context! {
                    tenant => context!{id => tenant.id(), name => tenant.config.name, zone => tenant.config.time_zone_name},
                    call => detail, date, notice,
                    operator => s.operator, csrf => s.csrf,
                    reauthorize => tenant.config.crm.auth == "oauth",
                    crm_vendor => tenant.config.crm.vendor,
                },
            )
        }
        Ok(None) => message(&state, StatusCode::NOT_FOUND, Some(&s), "Not found", "There is no such tenant or call."),
        Err(e) => {
            tracing::error!(error = %e, "call page query failed");
            message(&state, StatusCode::INTERNAL_SERVER_ERROR, Some(&s), "Error", "The call could not be read.")
        }
    }
}

macro_rules! action_route {
    ($name:ident, $action:expr, $doc:literal) => {
        #[doc = $doc]
        pub(super) async fn $name(
            State(state): State<Arc<ConsoleState>>,
            headers: HeaderMap,
            Path((tenant, call_id)): Path<(String, String)>,
            Form(form): Form<CsrfForm>,
        ) -> Response {
            act(&state, &headers, &tenant, &call_id, &form, $action).await
        }
    };
}

action_route!(resync, Action::Resync, "`POST /console/t/{tenant}/calls/{id}/resync`");
action_route!(replay, Action::Replay, "`POST /console/t/{tenant}/calls/{id}/replay`");
action_route!(approve, Action::Approve, "`POST /console/t/{tenant}/calls/{id}/approve`");
action_route!(reject, Action::Reject, "`POST /console/t/{tenant}/calls/{id}/reject`");
action_route!(undo, Action::Undo, "`POST /console/t/{tenant}/calls/{id}/undo`");

async fn act(
    state: &ConsoleState,
    headers: &HeaderMap,
    tenant: &str,
    call_id: &str,
    form: &CsrfForm,
    action: Action,
) -> Response {
    let s = match post_session(state, headers, form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tenant = match tenant_of(state, &s, tenant) {
        Ok(t) => t,
        Err(r) => return r,
    };
    match state.core.store.call(tenant.id(), call_id).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return message(state, StatusCode::NOT_FOUND, Some(&s), "Not found", "There is no such tenant or call.");
        }
        Err(e) => {
            tracing::error!(error = %e, "console action failed");
            return message(state, StatusCode::INTERNAL_SERVER_ERROR, Some(&s), "Error", "The action failed.");
        }
    }
    let done = match state.perform(&tenant, call_id, action, &format!("operator:{}", s.operator)).await {
        Ok(ActionResult::Done(_)) => action.name(),
        Ok(ActionResult::Nothing(_)) => "nothing",
        Ok(ActionResult::Refused(why)) => {
            return message(state, StatusCode::CONFLICT, Some(&s), "Not done", &why);
        }
        Err(e) => {
            tracing::error!(error = %e, "console action failed");
            return message(state, StatusCode::INTERNAL_SERVER_ERROR, Some(&s), "Error", "The action failed.");
        }
    };
    Redirect::to(&format!("/console/t/{}/calls/{}?done={done}", tenant.id(), urlencode(call_id))).into_response()
}

#[derive(Deserialize)]
pub(super) struct ResolveForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    keep: String,
}

/// `POST /console/t/{tenant}/conflicts/{id}/resolve` (form: `keep` = `crm` | `ai`): settles a
/// hybrid-field conflict and returns to the operations page.
pub(super) async fn resolve_conflict(
    State(state): State<Arc<ConsoleState>>,
    headers: HeaderMap,
    Path((tenant, id)): Path<(String, String)>,
    Form(form): Form<ResolveForm>,
) -> Response {
    let s = match post_session(&state, &headers, &CsrfForm { csrf: form.csrf }) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tenant = match tenant_of(&state, &s, &tenant) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(keep) = super::Keep::parse(&form.keep) else {
        return message(&state, StatusCode::BAD_REQUEST, Some(&s), "Not done", "Choose which value to keep.");
    };
    let Ok(id) = id.parse::<i64>() else {
        return message(&state, StatusCode::NOT_FOUND, Some(&s), "Not found", "There is no such conflict.");
    };
    use super::ResolveError as E;
    match state.resolve_conflict(&tenant, id, keep, &format!("operator:{}", s.operator)).await {
        Ok(r) => {
            Redirect::to(&format!("/console/t/{}/operations?done={}#conflicts", tenant.id(), r.status)).into_response()
        }
        Err(E::Unknown) => message(&state, StatusCode::NOT_FOUND, Some(&s), "Not found", "There is no such conflict."),
        Err(E::Store(_)) => {
            message(&state, StatusCode::INTERNAL_SERVER_ERROR, Some(&s), "Error", "The conflict could not be settled.")
        }
        Err(e) => message(&state, StatusCode::CONFLICT, Some(&s), "Not done", &e.to_string()),
    }
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// `POST /console/t/{tenant}/connect/{vendor}`: re-authorize the tenant's CRM connection through
/// the existing OAuth connect flow (a redirect to the vendor's authorize page).
pub(super) async fn reauthorize(
    State(state): State<Arc<ConsoleState>>,
    service: Option<Extension<Arc<ConnectService>>>,
    headers: HeaderMap,
    Path((tenant, vendor)): Path<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let s = match post_session(&state, &headers, &form) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let tenant = match tenant_of(&state, &s, &tenant) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let app = service.as_ref().and_then(|Extension(svc)| svc.apps.get(&vendor).map(|a| (svc.clone(), a.clone())));
    let Some((svc, app)) = app.filter(|_| tenant.config.crm.auth == "oauth" && tenant.config.crm.vendor == vendor)
    else {
        return message(
            &state,
            StatusCode::NOT_FOUND,
            Some(&s),
            "Not available",
            "This tenant does not connect that CRM with OAuth.",
        );
    };
    match svc.connections.start(&app, tenant.id()).await {
        Ok(url) => {
            tracing::info!(tenant = %tenant.id(), operator = %s.operator, "operator started a CRM re-authorization");
            Redirect::to(url.as_str()).into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "starting a re-authorization failed");
            message(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                Some(&s),
                "Error",
                "The connection could not be started.",
            )
        }
    }
}
