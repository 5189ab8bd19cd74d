//! In-process emulator of the Shopify Admin GraphQL API for the one operation callside sends
//! (`customerByIdentifier` with the customer's orders, see `connectors::pos::shopify`). It is
//! not a GraphQL engine: it recognises that operation and answers the fields the document asks
//! for, and anything else gets a GraphQL error — so a change to the connector's query that the
//! emulator does not know fails a test instead of passing silently.
//!
//! Faithful where it matters to the connector:
//! - `POST /admin/api/{YYYY-MM}/graphql.json` with `X-Shopify-Access-Token` (401 otherwise);
//! - `CustomerIdentifierInput` takes exactly one identifier; a phone number or email is held by
//!   at most one customer, so the answer is one customer or `null`;
//! - `numberOfOrders` is a string (`UnsignedInt64`), money a decimal string (`MoneyV2`);
//! - connections take at most 250 items (`first`);
//! - every answer carries `extensions.cost`; a query over the bucket is answered **200** with
//!   `errors[].extensions.code = "THROTTLED"` and no data (<https://shopify.dev/docs/api/usage/limits>);
//! - `staffMember` is refused with `ACCESS_DENIED` unless the shop grants `read_users`.
//!
//! Faults (outage, latency, N failures, a stall) come from [`super::faults::FaultSwitches`];
//! [`ShopifyState::throttle_next`] empties the cost bucket for the next N queries.

use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jiff::Timestamp;
use serde_json::{Value, json};

use super::faults::{Admission, FaultSwitches};

/// The bucket of a standard shop (points) and its restore rate (points per second).
const MAX_AVAILABLE: f64 = 2000.0;
const RESTORE_RATE: f64 = 100.0;
/// Shopify's cap on `first` / `last` for a connection.
const MAX_PAGE: i64 = 250;

#[derive(Debug, Clone)]
struct Customer {
    id: String,
    first_name: String,
    email: Option<String>,
    phone: Option<String>,
}

#[derive(Debug, Clone)]
struct Order {
    id: String,
    customer_id: String,
    processed_at: Timestamp,
    /// (name, quantity, unit price in cents)
    items: Vec<(String, i64, i64)>,
    staff: Option<String>,
}

impl Order {
    fn total(&self) -> i64 {
        self.items.iter().map(|(_, q, p)| q * p).sum()
    }
}

#[derive(Default)]
struct Inner {
    customers: Vec<Customer>,
    orders: Vec<Order>,
    next_id: u64,
    throttle_next: usize,
    staff_scope: bool,
}

pub struct ShopifyState {
    token: String,
    inner: Mutex<Inner>,
    pub faults: FaultSwitches,
}

fn cents(minor: i64) -> String {
    format!("{}.{:02}", minor / 100, minor % 100)
}

impl ShopifyState {
    pub fn new(token: &str) -> Arc<Self> {
        Arc::new(Self { token: token.to_owned(), inner: Mutex::default(), faults: FaultSwitches::default() })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A customer; returns its global id (`gid://shopify/Customer/N`).
    pub fn insert_customer(&self, first_name: &str, email: Option<&str>, phone_e164: Option<&str>) -> String {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = format!("gid://shopify/Customer/{}", 7_000_000 + inner.next_id);
        inner.customers.push(Customer {
            id: id.clone(),
            first_name: first_name.to_owned(),
            email: email.map(str::to_owned),
            phone: phone_e164.map(str::to_owned),
        });
        id
    }

    /// An order for the customer: one of each item (name, unit price in cents).
    pub fn insert_order(&self, customer: &str, at: Timestamp, items: &[(&str, i64)], staff: Option<&str>) -> String {
        let mut inner = self.lock();
        inner.next_id += 1;
        let id = format!("gid://shopify/Order/{}", 5_000_000 + inner.next_id);
        inner.orders.push(Order {
            id: id.clone(),
            customer_id: customer.to_owned(),
            processed_at: at,
            items: items.iter().map(|(n, p)| ((*n).to_owned(), 1, *p)).collect(),
            staff: staff.map(str::to_owned),
        });
        id
    }

    /// The next `n` queries are throttled (HTTP 200, `THROTTLED`).
    pub fn throttle_next(&self, n: usize) {
        self.lock().throttle_next = n;
    }

    /// Whether the app's token may read staff members (`read_users`, Plus / Advanced shops).
    pub fn grant_staff_scope(&self, granted: bool) {
        self.lock().staff_scope = granted;
    }
}

/// Serves the emulator on `127.0.0.1:port` (0: any free port).
pub async fn start_on(token: &str, port: u16) -> std::io::Result<super::Emulator<ShopifyState>> {
    let state = ShopifyState::new(token);
    super::Emulator::serve(state.clone(), router(state), port, "shopify").await
}

pub fn router(state: Arc<ShopifyState>) -> Router {
    Router::new()
        .route("/admin/api/{version}/graphql.json", post(graphql))
        .fallback(|| async { (StatusCode::NOT_FOUND, axum::Json(json!({"errors": "Not Found"}))).into_response() })
        .with_state(state)
}

fn cost(requested: f64, available: f64) -> Value {
    json!({"cost": {"requestedQueryCost": requested, "actualQueryCost": if available >= requested { json!(requested) } else { Value::Null },
        "throttleStatus": {"maximumAvailable": MAX_AVAILABLE, "currentlyAvailable": available, "restoreRate": RESTORE_RATE}}})
}

fn graphql_error(code: &str, message: &str, requested: f64) -> Response {
    axum::Json(json!({"errors": [{"message": message, "extensions": {"code": code}}], "extensions": cost(requested, MAX_AVAILABLE)}))
        .into_response()
}

async fn graphql(
    State(state): State<Arc<ShopifyState>>,
    Path(version): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = format!("/admin/api/{version}/graphql.json");
    match state.faults.admit(&path).await {
        Admission::Pass => {}
        Admission::Down => {
            return (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], "<html>503</html>")
                .into_response();
        }
        Admission::Fail(429) => {
            return (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, "1")],
                axum::Json(json!({"errors": "Exceeded rate limit"})),
            )
                .into_response();
        }
        Admission::Fail(status) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            return (status, axum::Json(json!({"errors": "Internal Server Error"}))).into_response();
        }
    }
    let version_ok = version.len() == 7
        && version.as_bytes()[4] == b'-'
        && version.bytes().enumerate().all(|(i, b)| i == 4 || b.is_ascii_digit());
    if !version_ok {
        return (StatusCode::NOT_FOUND, axum::Json(json!({"errors": "Not Found"}))).into_response();
    }
    if headers.get("x-shopify-access-token").and_then(|v| v.to_str().ok()) != Some(state.token.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"errors": "[API] Invalid API key or access token (unrecognized login or wrong password)"}),
            ),
        )
            .into_response();
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, axum::Json(json!({"errors": "Bad Request"}))).into_response();
    };
    let query = request.get("query").and_then(Value::as_str).unwrap_or_default();
    let vars = request.get("variables").cloned().unwrap_or(Value::Null);
    if !query.contains("customerByIdentifier(identifier: $identifier)") {
        return graphql_error("UNSUPPORTED_BY_EMULATOR", "the emulator answers customerByIdentifier only", 1.0);
    }
    let first = vars.get("orders").and_then(Value::as_i64).unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&first) {
        return graphql_error("BAD_USER_INPUT", "orders: first must be between 1 and 250", 1.0);
    }
    let requested = 2.0 + first as f64 * 2.0;
    let mut inner = state.lock();
    if inner.throttle_next > 0 {
        inner.throttle_next -= 1;
        let available = 2.0;
        return axum::Json(json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/limits"}}],
            "extensions": cost(requested, available),
        }))
        .into_response();
    }
    let wants_staff = query.contains("staffMember");
    if wants_staff && !inner.staff_scope {
        return axum::Json(json!({
            "data": {"customerByIdentifier": null},
            "errors": [{"message": "Access denied for staffMember field. Required access: `read_users` access scope.",
                        "extensions": {"code": "ACCESS_DENIED"}}],
            "extensions": cost(requested, MAX_AVAILABLE - requested),
        }))
        .into_response();
    }
    let identifier = vars.get("identifier").and_then(Value::as_object).cloned().unwrap_or_default();
    if identifier.len() != 1 {
        return graphql_error("INVALID_VARIABLE", "Variable $identifier must hold exactly one identifier", requested);
    }
    let (kind, value) = identifier.iter().next().expect("one entry");
    let value = value.as_str().unwrap_or_default();
    let customer = inner.customers.iter().find(|c| match kind.as_str() {
        "phoneNumber" => c.phone.as_deref() == Some(value),
        "emailAddress" => c.email.as_deref().is_some_and(|e| e.eq_ignore_ascii_case(value)),
        "id" => c.id == value,
        _ => false,
    });
    let data = customer.map(|c| {
        let mut orders: Vec<&Order> = inner.orders.iter().filter(|o| o.customer_id == c.id).collect();
        orders.sort_by_key(|o| std::cmp::Reverse(o.processed_at));
        let spent: i64 = orders.iter().map(|o| o.total()).sum();
        let nodes: Vec<Value> = orders
            .iter()
            .take(first as usize)
            .map(|o| {
                let mut node = json!({
                    "id": o.id,
                    "processedAt": o.processed_at.to_string(),
                    "totalPriceSet": {"shopMoney": {"amount": cents(o.total()), "currencyCode": "USD"}},
                    "lineItems": {"nodes": o.items.iter().map(|(n, q, _)| json!({"name": n, "quantity": q})).collect::<Vec<_>>()},
                });
                if wants_staff {
                    node["staffMember"] = o.staff.as_ref().map(|s| json!({"firstName": s})).unwrap_or(Value::Null);
                }
                node
            })
            .collect();
        json!({
            "id": c.id,
            "firstName": c.first_name,
            "numberOfOrders": orders.len().to_string(),
            "amountSpent": {"amount": cents(spent), "currencyCode": "USD"},
            "orders": {"pageInfo": {"hasNextPage": orders.len() > first as usize}, "nodes": nodes},
        })
    });
    axum::Json(json!({
        "data": {"customerByIdentifier": data.unwrap_or(Value::Null)},
        "extensions": cost(requested, MAX_AVAILABLE - requested),
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::pos::shopify::ShopifyPos;
    use axum::body::Body;
    use axum::http::Request;

    async fn send(app: &Router, version: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let req = Request::post(format!("/admin/api/{version}/graphql.json"))
            .header("x-shopify-access-token", token)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        crate::sandbox::call_router(app, req).await
    }

    #[tokio::test]
    async fn the_emulator_answers_the_connectors_query_and_refuses_what_it_does_not_know() {
        let state = ShopifyState::new("t");
        let ana = state.insert_customer("Ana", Some("ana@example.com"), Some("+14155550134"));
        state.insert_order(&ana, "2026-11-01T15:00:00Z".parse().unwrap(), &[("Haircut", 4500)], Some("Marta"));
        let app = router(state.clone());
        let q = |ident: Value, staff: bool| json!({"query": ShopifyPos::query(staff), "variables": {"identifier": ident, "orders": 25}});
        let (s, b) = send(&app, "2025-10", "t", q(json!({"phoneNumber": "+14155550134"}), false)).await;
        assert_eq!(s, StatusCode::OK);
        let c = &b["data"]["customerByIdentifier"];
        assert_eq!((c["id"].clone(), c["numberOfOrders"].clone()), (json!(ana), json!("1")));
        assert_eq!(c["amountSpent"]["amount"], "45.00");
        assert!(b["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"].is_number());
        assert!(c["orders"]["nodes"][0].get("staffMember").is_none());

        let (_, b) = send(&app, "2025-10", "t", q(json!({"phoneNumber": "+14155550199"}), false)).await;
        assert_eq!(b["data"]["customerByIdentifier"], Value::Null);
        let (_, b) = send(&app, "2025-10", "t", q(json!({"phoneNumber": "+1", "emailAddress": "a@b"}), false)).await;
        assert_eq!(b["errors"][0]["extensions"]["code"], "INVALID_VARIABLE");
        // staffMember needs read_users.
        let (_, b) = send(&app, "2025-10", "t", q(json!({"phoneNumber": "+14155550134"}), true)).await;
        assert_eq!(b["errors"][0]["extensions"]["code"], "ACCESS_DENIED");
        state.grant_staff_scope(true);
        let (_, b) = send(&app, "2025-10", "t", q(json!({"emailAddress": "ANA@example.com"}), true)).await;
        assert_eq!(b["data"]["customerByIdentifier"]["orders"]["nodes"][0]["staffMember"]["firstName"], "Marta");
        // Throttled: 200, THROTTLED, no data.
        state.throttle_next(1);
        let (s, b) = send(&app, "2025-10", "t", q(json!({"phoneNumber": "+14155550134"}), false)).await;
        assert_eq!((s, b["errors"][0]["extensions"]["code"].clone()), (StatusCode::OK, json!("THROTTLED")));
        assert!(b.get("data").is_none());
        // Auth, version, unknown operations.
        assert_eq!(send(&app, "2025-10", "bad", q(json!({}), false)).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(send(&app, "latest", "t", q(json!({}), false)).await.0, StatusCode::NOT_FOUND);
        let (_, b) = send(&app, "2025-10", "t", json!({"query": "{ shop { name } }"})).await;
        assert_eq!(b["errors"][0]["extensions"]["code"], "UNSUPPORTED_BY_EMULATOR");
    }
}
