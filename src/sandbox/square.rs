//! In-process emulator of the Square APIs callside reads: `POST /v2/customers/search` and
//! `POST /v2/orders/search`, with Square's documented constraints and error shape
//! (`{"errors":[{category, code, detail, field}]}`):
//!
//! - phone filters take `exact` *or* `fuzzy`, not both; an exact phone query must be E.164
//!   (leading `+`) and is compared with the stored numbers converted to E.164; a fuzzy query
//!   matches when every token is found in the number; email `exact` is case-insensitive
//!   (<https://developer.squareup.com/reference/square/objects/CustomerFilter>);
//! - orders search needs 1–10 `location_ids`, at most 10 customer ids, `limit` at most 1000
//!   (default 500), sorting by `CLOSED_AT` only with a state filter of closed states, and a
//!   `cursor` only with the query it came from
//!   (<https://developer.squareup.com/docs/orders-api/manage-orders/search-orders>);
//! - Bearer authentication (401 `UNAUTHORIZED`), the `Square-Version` each request sent is kept;
//!   faults (outage, latency, N failures — 429 answers `RATE_LIMITED` —, a stall) come from
//!   [`super::faults::FaultSwitches`].

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::faults::{Admission, FaultSwitches};

/// The demo location every seeded order belongs to.
pub const DEMO_LOCATION: &str = "LDEMO0SALON";

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    given_name: Option<String>,
    family_name: Option<String>,
    email: Option<String>,
    /// As typed at the till.
    phone: Option<String>,
}

#[derive(Debug, Clone)]
struct Order {
    id: String,
    location_id: String,
    customer_id: Option<String>,
    state: String,
    created_at: Timestamp,
    closed_at: Option<Timestamp>,
    /// (name, quantity, unit price in cents)
    items: Vec<(String, String, i64)>,
    currency: String,
}

impl Order {
    fn total(&self) -> i64 {
        self.items.iter().map(|(_, q, price)| q.parse::<f64>().map(|q| (q * *price as f64) as i64).unwrap_or(0)).sum()
    }

    fn json(&self) -> Value {
        let money = |amount: i64| json!({"amount": amount, "currency": self.currency});
        let items: Vec<Value> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, (name, q, price))| {
                let total = q.parse::<f64>().map(|q| (q * *price as f64) as i64).unwrap_or(0);
                json!({"uid": format!("li{i}"), "name": name, "quantity": q,
                       "base_price_money": money(*price), "total_money": money(total)})
            })
            .collect();
        let mut o = json!({
            "id": self.id, "location_id": self.location_id, "state": self.state,
            "created_at": self.created_at.to_string(), "updated_at": self.created_at.to_string(),
            "line_items": items, "total_money": money(self.total()), "version": 1,
        });
        if let Some(c) = &self.customer_id {
            o["customer_id"] = json!(c);
        }
        if let Some(t) = self.closed_at {
            o["closed_at"] = json!(t.to_string());
        }
        o
    }
}

#[derive(Default)]
struct Inner {
    customers: Vec<Customer>,
    orders: Vec<Order>,
    locations: Vec<String>,
    next_id: u64,
    square_versions: Vec<Option<String>>,
}

pub struct SquareState {
    token: String,
    inner: Mutex<Inner>,
    pub faults: FaultSwitches,
}

impl SquareState {
    pub fn new(token: &str) -> Arc<Self> {
        let inner = Inner { locations: vec![DEMO_LOCATION.to_owned()], ..Default::default() };
        Arc::new(Self { token: token.to_owned(), inner: Mutex::new(inner), faults: FaultSwitches::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn next_id(inner: &mut Inner, prefix: &str) -> String {
        inner.next_id += 1;
        format!("{prefix}{:010}", inner.next_id)
    }

    pub fn add_location(&self, id: &str) {
        self.lock().locations.push(id.to_owned());
    }

    /// A customer profile; returns its id.
    pub fn insert_customer(&self, given: &str, family: &str, email: Option<&str>, phone: Option<&str>) -> String {
        let mut inner = self.lock();
        let id = Self::next_id(&mut inner, "CUST");
        inner.customers.push(Customer {
            id: id.clone(),
            given_name: Some(given.to_owned()),
            family_name: Some(family.to_owned()),
            email: email.map(str::to_owned),
            phone: phone.map(str::to_owned),
        });
        id
    }

    /// A completed order at `location` for the customer; `items` are (name, unit price in cents),
    /// one of each. Returns the order id.
    pub fn insert_order(
        &self,
        customer_id: &str,
        location: &str,
        closed_at: Timestamp,
        items: &[(&str, i64)],
    ) -> String {
        let mut inner = self.lock();
        let id = Self::next_id(&mut inner, "ORD");
        inner.orders.push(Order {
            id: id.clone(),
            location_id: location.to_owned(),
            customer_id: Some(customer_id.to_owned()),
            state: "COMPLETED".into(),
            created_at: closed_at,
            closed_at: Some(closed_at),
            items: items.iter().map(|(n, p)| ((*n).to_owned(), "1".to_owned(), *p)).collect(),
            currency: "USD".into(),
        });
        id
    }

    /// The `Square-Version` header of every request received, in order.
    pub fn square_versions(&self) -> Vec<Option<String>> {
        self.lock().square_versions.clone()
    }
}

/// Serves the emulator on `127.0.0.1:port` (0: any free port).
pub async fn start_on(token: &str, port: u16) -> std::io::Result<super::Emulator<SquareState>> {
    let state = SquareState::new(token);
    super::Emulator::serve(state.clone(), router(state), port, "square").await
}

pub fn router(state: Arc<SquareState>) -> Router {
    Router::new()
        .route("/v2/customers/search", post(search_customers))
        .route("/v2/orders/search", post(search_orders))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "INVALID_REQUEST_ERROR", "NOT_FOUND", None) })
        .with_state(state)
}

fn error(status: StatusCode, category: &str, code: &str, field: Option<&str>) -> Response {
    let mut e = json!({"category": category, "code": code, "detail": format!("{code} (callside Square emulator)")});
    if let Some(f) = field {
        e["field"] = json!(f);
    }
    (status, axum::Json(json!({"errors": [e]}))).into_response()
}

fn invalid(code: &str, field: &str) -> Response {
    error(StatusCode::BAD_REQUEST, "INVALID_REQUEST_ERROR", code, Some(field))
}

/// Faults, then authentication, then the JSON body.
async fn gate(state: &SquareState, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Result<Value, Response> {
    match state.faults.admit(uri.path()).await {
        Admission::Pass => {}
        Admission::Down => {
            return Err((StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], "<html>503</html>")
                .into_response());
        }
        Admission::Fail(429) => {
            return Err(error(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMIT_ERROR", "RATE_LIMITED", None));
        }
        Admission::Fail(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return Err(error(status, "API_ERROR", "INTERNAL_SERVER_ERROR", None));
        }
    }
    let version = headers.get("square-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    state.lock().square_versions.push(version);
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(state.token.as_str()) {
        return Err(error(StatusCode::UNAUTHORIZED, "AUTHENTICATION_ERROR", "UNAUTHORIZED", None));
    }
    serde_json::from_slice(body)
        .map_err(|_| error(StatusCode::BAD_REQUEST, "INVALID_REQUEST_ERROR", "INVALID_BODY", None))
}

/// `+` followed by the digits (any layout); US numbers typed without a country code get `+1`.
fn to_e164(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    if raw.trim_start().starts_with('+') {
        return (!digits.is_empty()).then(|| format!("+{digits}"));
    }
    match digits.len() {
        10 => Some(format!("+1{digits}")),
        11 if digits.starts_with('1') => Some(format!("+{digits}")),
        _ => None,
    }
}

enum TextFilter {
    Exact(String),
    Fuzzy(Vec<String>),
}

/// A text filter of the query, or the error code and field it is refused with.
fn text_filter(v: &Value, field: &str) -> Result<Option<TextFilter>, (&'static str, String)> {
    let Some(f) = v.get(field) else { return Ok(None) };
    let path = format!("query.filter.{field}");
    match (f.get("exact").and_then(Value::as_str), f.get("fuzzy").and_then(Value::as_str)) {
        (Some(_), Some(_)) => Err(("INVALID_VALUE", path)),
        (Some(e), None) => Ok(Some(TextFilter::Exact(e.to_owned()))),
        (None, Some(q)) => Ok(Some(TextFilter::Fuzzy(
            q.split_whitespace()
                .map(|t| t.chars().filter(|c| c.is_alphanumeric()).collect::<String>().to_lowercase())
                .collect(),
        ))),
        (None, None) => Err(("MISSING_REQUIRED_PARAMETER", path)),
    }
}

async fn search_customers(
    State(state): State<Arc<SquareState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = match gate(&state, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let limit = body.get("limit").and_then(Value::as_i64).unwrap_or(100);
    if limit < 1 {
        return invalid("VALUE_TOO_LOW", "limit");
    }
    if limit > 100 {
        return invalid("VALUE_TOO_HIGH", "limit");
    }
    let filter = body.pointer("/query/filter").cloned().unwrap_or(Value::Null);
    let (phone, email) = match (text_filter(&filter, "phone_number"), text_filter(&filter, "email_address")) {
        (Ok(p), Ok(e)) => (p, e),
        (Err((code, field)), _) | (_, Err((code, field))) => return invalid(code, &field),
    };
    let phone = match phone {
        Some(TextFilter::Exact(q)) => match q.trim_start().starts_with('+').then(|| to_e164(&q)).flatten() {
            Some(e164) => Some(TextFilter::Exact(e164)),
            None => return invalid("INVALID_PHONE_NUMBER", "query.filter.phone_number.exact"),
        },
        other => other,
    };
    let inner = state.lock();
    let found: Vec<Value> = inner
        .customers
        .iter()
        .filter(|c| match &phone {
            None => true,
            Some(TextFilter::Exact(e164)) => c.phone.as_deref().and_then(to_e164).as_deref() == Some(e164.as_str()),
            Some(TextFilter::Fuzzy(tokens)) => {
                let digits = c.phone.as_deref().and_then(to_e164).unwrap_or_default();
                tokens.iter().all(|t| digits.contains(t.as_str()))
            }
        })
        .filter(|c| match &email {
            None => true,
            Some(TextFilter::Exact(e)) => c.email.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(e.trim())),
            Some(TextFilter::Fuzzy(tokens)) => {
                let m = c.email.as_deref().unwrap_or_default().to_lowercase();
                let words: Vec<String> =
                    m.split(|ch: char| !ch.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_owned).collect();
                tokens.iter().all(|t| words.iter().any(|w| w.contains(t.as_str())))
            }
        })
        .take(limit as usize)
        .map(|c| {
            json!({"id": c.id, "given_name": c.given_name, "family_name": c.family_name,
                   "email_address": c.email, "phone_number": c.phone,
                   "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z"})
        })
        .collect();
    // Square answers an empty object when nothing matches.
    let out = if found.is_empty() { json!({}) } else { json!({"customers": found}) };
    axum::Json(out).into_response()
}

const CLOSED_STATES: [&str; 2] = ["COMPLETED", "CANCELED"];

async fn search_orders(State(state): State<Arc<SquareState>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let body = match gate(&state, &uri, &headers, &body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let strings = |v: Option<&Value>| -> Option<Vec<String>> {
        v.map(|v| v.as_array().map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect()))
            .unwrap_or(Some(vec![]))
    };
    let Some(locations) = strings(body.get("location_ids")) else { return invalid("INVALID_VALUE", "location_ids") };
    if locations.is_empty() {
        return invalid("MISSING_REQUIRED_PARAMETER", "location_ids");
    }
    if locations.len() > 10 {
        return invalid("ARRAY_LENGTH_TOO_LONG", "location_ids");
    }
    let limit = body.get("limit").and_then(Value::as_i64).unwrap_or(500);
    if limit < 1 {
        return invalid("VALUE_TOO_LOW", "limit");
    }
    if limit > 1000 {
        return invalid("VALUE_TOO_HIGH", "limit");
    }
    let query = body.get("query").cloned().unwrap_or(Value::Null);
    let Some(customers) = strings(query.pointer("/filter/customer_filter/customer_ids")) else {
        return invalid("INVALID_VALUE", "query.filter.customer_filter.customer_ids");
    };
    if customers.len() > 10 {
        return invalid("ARRAY_LENGTH_TOO_LONG", "query.filter.customer_filter.customer_ids");
    }
    let states = strings(query.pointer("/filter/state_filter/states")).unwrap_or_default();
    let sort_field = query.pointer("/sort/sort_field").and_then(Value::as_str).unwrap_or("CREATED_AT").to_owned();
    let ascending = query.pointer("/sort/sort_order").and_then(Value::as_str) == Some("ASC");
    if !["CREATED_AT", "UPDATED_AT", "CLOSED_AT"].contains(&sort_field.as_str()) {
        return invalid("INVALID_ENUM_VALUE", "query.sort.sort_field");
    }
    // SearchOrdersSortField: CLOSED_AT needs a state filter of closed states.
    if sort_field == "CLOSED_AT" && (states.is_empty() || !states.iter().all(|s| CLOSED_STATES.contains(&s.as_str()))) {
        return invalid("INVALID_VALUE", "query.sort.sort_field");
    }
    // A cursor is the offset and the query it belongs to.
    let query_key = format!("{locations:?}{query}");
    let offset = match body.get("cursor").and_then(Value::as_str) {
        None => 0,
        Some(c) => match c.split_once(':') {
            Some((off, key)) if key == hex::encode(sha(&query_key)) => off.parse::<usize>().unwrap_or(usize::MAX),
            _ => return invalid("INVALID_CURSOR", "cursor"),
        },
    };
    let inner = state.lock();
    if let Some(unknown) = locations.iter().find(|l| !inner.locations.contains(l)) {
        let _ = unknown;
        return error(StatusCode::BAD_REQUEST, "INVALID_REQUEST_ERROR", "NOT_FOUND", Some("location_ids"));
    }
    let mut orders: Vec<&Order> = inner
        .orders
        .iter()
        .filter(|o| locations.contains(&o.location_id))
        .filter(|o| customers.is_empty() || o.customer_id.as_ref().is_some_and(|c| customers.contains(c)))
        .filter(|o| states.is_empty() || states.contains(&o.state))
        .collect();
    let key = |o: &Order| match sort_field.as_str() {
        "CLOSED_AT" => o.closed_at.unwrap_or(o.created_at),
        _ => o.created_at,
    };
    orders.sort_by(|a, b| if ascending { key(a).cmp(&key(b)) } else { key(b).cmp(&key(a)) });
    let page: Vec<Value> = orders.iter().skip(offset).take(limit as usize).map(|o| o.json()).collect();
    let next = offset.saturating_add(limit as usize);
    let mut out = json!({"orders": page});
    if next < orders.len() {
        out["cursor"] = json!(format!("{next}:{}", hex::encode(sha(&query_key))));
    }
    axum::Json(out).into_response()
}

fn sha(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;

    async fn post(app: &Router, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(path)
            .header("authorization", format!("Bearer {token}"))
            .header("square-version", "2025-10-16")
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        crate::sandbox::call_router(app, req).await
    }

    #[tokio::test]
    async fn the_emulator_enforces_the_documented_constraints() {
        let state = SquareState::new("t");
        let ana = state.insert_customer("Ana", "López", Some("ana@example.com"), Some("(415) 555-0134"));
        for day in 1..=3 {
            state.insert_order(
                &ana,
                DEMO_LOCATION,
                format!("2026-11-0{day}T15:00:00Z").parse().unwrap(),
                &[("Haircut", 4500)],
            );
        }
        let app = router(state.clone());
        let search = |filter: Value| json!({"query": {"filter": filter}});
        // Exact phone: E.164 query against any stored layout; not E.164: refused.
        let (s, b) =
            post(&app, "/v2/customers/search", "t", search(json!({"phone_number": {"exact": "+14155550134"}}))).await;
        assert_eq!((s, b["customers"][0]["id"].clone()), (StatusCode::OK, json!(ana)));
        let (s, b) =
            post(&app, "/v2/customers/search", "t", search(json!({"phone_number": {"exact": "4155550134"}}))).await;
        assert_eq!((s, b["errors"][0]["code"].clone()), (StatusCode::BAD_REQUEST, json!("INVALID_PHONE_NUMBER")));
        let (s, _) =
            post(&app, "/v2/customers/search", "t", search(json!({"phone_number": {"exact": "+1", "fuzzy": "415"}})))
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "exact or fuzzy, not both");
        let (_, b) =
            post(&app, "/v2/customers/search", "t", search(json!({"phone_number": {"exact": "+14155550199"}}))).await;
        assert_eq!(b, json!({}), "nothing matches: an empty object");
        let (_, b) =
            post(&app, "/v2/customers/search", "t", search(json!({"email_address": {"exact": "ANA@example.com"}})))
                .await;
        assert_eq!(b["customers"].as_array().unwrap().len(), 1, "exact email is case-insensitive");
        let (s, b) = post(&app, "/v2/customers/search", "wrong", search(json!({}))).await;
        assert_eq!((s, b["errors"][0]["code"].clone()), (StatusCode::UNAUTHORIZED, json!("UNAUTHORIZED")));

        // Orders: locations required, CLOSED_AT needs a closed state filter, cursor paging.
        let q = json!({"filter": {"customer_filter": {"customer_ids": [ana]}, "state_filter": {"states": ["COMPLETED"]}},
                       "sort": {"sort_field": "CLOSED_AT", "sort_order": "DESC"}});
        let (s, b) = post(&app, "/v2/orders/search", "t", json!({"query": q})).await;
        assert_eq!((s, b["errors"][0]["field"].clone()), (StatusCode::BAD_REQUEST, json!("location_ids")));
        let mut no_state = q.clone();
        no_state["filter"].as_object_mut().unwrap().remove("state_filter");
        let (s, _) =
            post(&app, "/v2/orders/search", "t", json!({"location_ids": [DEMO_LOCATION], "query": no_state})).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "CLOSED_AT without a state filter");
        let (s, b) =
            post(&app, "/v2/orders/search", "t", json!({"location_ids": [DEMO_LOCATION], "query": q, "limit": 2}))
                .await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(b["orders"].as_array().unwrap().len(), 2);
        assert_eq!(b["orders"][0]["closed_at"], "2026-11-03T15:00:00Z", "newest first");
        let cursor = b["cursor"].as_str().unwrap().to_owned();
        let (s, _) = post(
            &app,
            "/v2/orders/search",
            "t",
            json!({"location_ids": [DEMO_LOCATION], "limit": 2, "cursor": cursor}),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "a cursor only with its own query");
        let (_, b) = post(
            &app,
            "/v2/orders/search",
            "t",
            json!({"location_ids": [DEMO_LOCATION], "query": q, "limit": 2, "cursor": cursor}),
        )
        .await;
        assert_eq!(b["orders"].as_array().unwrap().len(), 1);
        assert!(b.get("cursor").is_none());
        let (s, _) =
            post(&app, "/v2/orders/search", "t", json!({"location_ids": [DEMO_LOCATION], "query": q, "limit": 1001}))
                .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);

        // An injected 429 is Square's RATE_LIMITED; then service resumes.
        state.faults.fail_next(429, 1);
        let (s, b) = post(&app, "/v2/customers/search", "t", search(json!({}))).await;
        assert_eq!((s, b["errors"][0]["code"].clone()), (StatusCode::TOO_MANY_REQUESTS, json!("RATE_LIMITED")));
        assert_eq!(post(&app, "/v2/customers/search", "t", search(json!({}))).await.0, StatusCode::OK);
        assert!(state.square_versions().iter().all(|v| v.as_deref() == Some("2025-10-16")));
    }
}
