//! Square: the caller's customer profile and completed orders.
//!
//! - `POST /v2/customers/search` with `query.filter.phone_number.exact` (or `email_address.exact`).
//!   Exact phone matching wants an E.164 query and compares it with the stored numbers converted
//!   to E.164, so any stored layout of the same number matches; `fuzzy` matches *tokens* (a query
//!   of `415` finds every number containing 415) and is never used for identity
//!   (<https://developer.squareup.com/reference/square/objects/CustomerFilter>). Square allows
//!   several profiles with one number: more than one is reported ambiguous, not merged.
//! - `POST /v2/orders/search` with `location_ids` (required, at most 10), a `customer_filter`
//!   (at most 10 ids) and a `state_filter` of `COMPLETED`, sorted by `CLOSED_AT` descending —
//!   sorting by `CLOSED_AT` is only accepted together with a state filter of closed states
//!   (<https://developer.squareup.com/reference/square/objects/SearchOrdersSortField>). Pages of
//!   up to 500 (the default; max 1000) follow `cursor`; a cursor must be sent with the same query
//!   (<https://developer.squareup.com/docs/orders-api/manage-orders/search-orders>).
//! - Every request carries `Square-Version` and a Bearer token. Errors are
//!   `{"errors":[{category, code, detail, field}]}`; a 429 has code `RATE_LIMITED`
//!   (<https://developer.squareup.com/docs/build-basics/handling-errors>).
//!
//! Orders carry no staff member (a payment's `team_member_id` would need two more requests per
//! call), so a Square summary has no `last_staff`.

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{Auth, Money, PosConnector, PosHttp, PosItem, PosMatch, PosPurchase, PosSummary, Raw, classify_status};
use crate::connectors::ConnectorError;

/// The API version this connector was written against (sent as `Square-Version`).
pub const DEFAULT_SQUARE_VERSION: &str = "2025-10-16";
/// Orders per page (Square's default page size).
const ORDERS_PAGE: u32 = 500;
/// Pages read per lookup: a ring-time read stays at most this many requests; beyond it the
/// history is marked partial.
const MAX_ORDER_PAGES: usize = 3;
/// More profiles than this on one number is not a person (a shop's own number on test
/// profiles): the search asks for this many and reports ambiguity.
const CUSTOMER_LIMIT: u32 = 10;

pub struct SquarePos {
    base_url: Url,
    version: String,
    location_ids: Vec<String>,
    http: PosHttp,
}

impl SquarePos {
    /// `base_url` is `https://connect.squareup.com/` in production (the sandbox's URL in tests).
    pub fn new(base_url: Url, location_ids: Vec<String>, http: PosHttp) -> Self {
        Self { base_url, version: DEFAULT_SQUARE_VERSION.to_owned(), location_ids, http }
    }

    /// The `Square-Version` to send.
    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    fn url(&self, path: &str) -> Result<Url, ConnectorError> {
        self.base_url.join(path).map_err(|e| ConnectorError::Permanent(format!("Square URL: {e}")))
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str, body: &Value) -> Result<T, ConnectorError> {
        let raw = self.http.post(self.url(path)?, Auth::Bearer, &[("Square-Version", &self.version)], body).await?;
        if !raw.status.is_success() {
            return Err(classify(&raw, self.http.now()));
        }
        serde_json::from_slice(&raw.body).map_err(|_| {
            ConnectorError::Transient(format!("unreadable Square response (HTTP {})", raw.status.as_u16()))
        })
    }

    async fn find(&self, filter: Value) -> Result<PosMatch, ConnectorError> {
        let body = json!({"query": {"filter": filter}, "limit": CUSTOMER_LIMIT});
        let found: CustomersPage = self.post("v2/customers/search", &body).await?;
        let customer = match found.customers.as_slice() {
            [] => return Ok(PosMatch::NotFound),
            [one] => one,
            many => return Ok(PosMatch::Ambiguous(many.len())),
        };
        let (purchases, partial) = self.orders_of(&customer.id).await?;
        Ok(PosMatch::Found(Box::new(PosSummary::from_purchases(
            "square",
            customer.id.clone(),
            customer.given_name.clone(),
            purchases,
            None,
            None,
            partial,
        ))))
    }

    /// The customer's completed orders, newest first, at most [`MAX_ORDER_PAGES`] pages.
    async fn orders_of(&self, customer_id: &str) -> Result<(Vec<PosPurchase>, bool), ConnectorError> {
        let query = json!({
            "filter": {
                "customer_filter": {"customer_ids": [customer_id]},
                "state_filter": {"states": ["COMPLETED"]},
            },
            "sort": {"sort_field": "CLOSED_AT", "sort_order": "DESC"},
        });
        let mut purchases = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..MAX_ORDER_PAGES {
            let mut body = json!({"location_ids": self.location_ids, "query": query, "limit": ORDERS_PAGE});
            if let Some(c) = &cursor {
                body["cursor"] = json!(c);
            }
            let page: OrdersPage = self.post("v2/orders/search", &body).await?;
            purchases.extend(page.orders.into_iter().map(Order::into_purchase));
            cursor = page.cursor.filter(|c| !c.is_empty());
            if cursor.is_none() {
                return Ok((purchases, false));
            }
        }
        Ok((purchases, true))
    }
}

#[async_trait]
impl PosConnector for SquarePos {
    fn vendor(&self) -> &'static str {
        "square"
    }

    async fn by_phone(&self, e164: &str) -> Result<PosMatch, ConnectorError> {
        self.find(json!({"phone_number": {"exact": e164}})).await
    }

    async fn by_email(&self, email: &str) -> Result<PosMatch, ConnectorError> {
        // Exact email matching is case-insensitive (CustomerFilter.email_address).
        self.find(json!({"email_address": {"exact": email}})).await
    }
}

#[derive(Deserialize)]
struct CustomersPage {
    // Square answers `{}` when nothing matches.
    #[serde(default)]
    customers: Vec<Customer>,
}

#[derive(Deserialize)]
struct Customer {
    id: String,
    #[serde(default)]
    given_name: Option<String>,
}

#[derive(Deserialize)]
struct OrdersPage {
    #[serde(default)]
    orders: Vec<Order>,
    #[serde(default)]
    cursor: Option<String>,
}

#[derive(Deserialize)]
struct Order {
    id: String,
    #[serde(default)]
    closed_at: Option<Timestamp>,
    #[serde(default)]
    created_at: Option<Timestamp>,
    #[serde(default)]
    line_items: Vec<LineItem>,
    #[serde(default)]
    total_money: Option<SquareMoney>,
}

#[derive(Deserialize)]
struct LineItem {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    quantity: Option<String>,
}

#[derive(Deserialize)]
struct SquareMoney {
    amount: i64,
    currency: String,
}

impl Order {
    fn into_purchase(self) -> PosPurchase {
        PosPurchase {
            id: self.id,
            at: self.closed_at.or(self.created_at),
            items: self
                .line_items
                .into_iter()
                .map(|l| PosItem {
                    // An ad-hoc amount rung up without an item has no name.
                    name: l.name.unwrap_or_else(|| "Custom amount".to_owned()),
                    quantity: l.quantity.unwrap_or_else(|| "1".to_owned()),
                })
                .collect(),
            total: self.total_money.map(|m| Money { minor: m.amount, currency: m.currency }),
            staff: None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<SquareError>,
}

#[derive(Deserialize)]
struct SquareError {
    #[serde(default)]
    category: String,
    #[serde(default)]
    code: String,
    #[serde(default)]
    field: Option<String>,
}

/// Square's error classes. The `detail` text can echo the query (a phone or an email), so only
/// the category and code are kept.
fn classify(raw: &Raw, now: Timestamp) -> ConnectorError {
    let body: ErrorBody = serde_json::from_slice(&raw.body).unwrap_or(ErrorBody { errors: vec![] });
    let first = body.errors.first();
    let detail = match first {
        Some(e) => format!("Square {} {} (HTTP {})", e.category, e.code, raw.status.as_u16()),
        None => format!("Square HTTP {}", raw.status.as_u16()),
    };
    let retry_after = raw
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::connectors::parse_retry_after(v, now));
    if first.is_some_and(|e| e.code == "RATE_LIMITED") {
        return ConnectorError::RateLimited { retry_after, detail };
    }
    match classify_status(raw.status, retry_after, detail) {
        ConnectorError::Validation { message, .. } => {
            ConnectorError::Validation { message, fields: body.errors.iter().filter_map(|e| e.field.clone()).collect() }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::StatusCode;
    use reqwest::header::HeaderMap;

    fn raw(status: u16, body: &str) -> Raw {
        Raw { status: StatusCode::from_u16(status).unwrap(), headers: HeaderMap::new(), body: body.as_bytes().to_vec() }
    }

    #[test]
    fn square_errors_are_classified_without_echoing_the_detail() {
        let now: Timestamp = "2026-11-23T14:00:00Z".parse().unwrap();
        let limited = r#"{"errors":[{"category":"RATE_LIMIT_ERROR","code":"RATE_LIMITED","detail":"slow down"}]}"#;
        assert!(matches!(classify(&raw(429, limited), now), ConnectorError::RateLimited { .. }));
        let bad = r#"{"errors":[{"category":"INVALID_REQUEST_ERROR","code":"INVALID_VALUE","detail":"+1415 is bad","field":"query.filter.phone_number.exact"}]}"#;
        match classify(&raw(400, bad), now) {
            ConnectorError::Validation { message, fields } => {
                assert_eq!(fields, ["query.filter.phone_number.exact"]);
                assert!(!message.contains("+1415"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let auth = r#"{"errors":[{"category":"AUTHENTICATION_ERROR","code":"UNAUTHORIZED"}]}"#;
        assert!(matches!(classify(&raw(401, auth), now), ConnectorError::AuthRevoked(_)));
        assert!(matches!(classify(&raw(503, "<html>"), now), ConnectorError::Transient(_)));
    }
}
