//! Shopify (Admin GraphQL API): the caller's customer and their latest orders in one query.
//!
//! - `POST https://{shop}.myshopify.com/admin/api/{version}/graphql.json` with the app's token in
//!   `X-Shopify-Access-Token`.
//! - `customerByIdentifier(identifier: CustomerIdentifierInput!)`, the input holding exactly one
//!   of `id`, `emailAddress`, `phoneNumber` or `customId`
//!   (<https://shopify.dev/docs/api/admin-graphql/latest/input-objects/CustomerIdentifierInput>).
//!   A shop holds a phone number or an email on at most one customer, so the answer is one
//!   customer or `null` — never several.
//! - `amountSpent` (MoneyV2: a *decimal string* and a currency) and `numberOfOrders` (an
//!   `UnsignedInt64`, serialized as a JSON *string*) are the shop's own lifetime figures.
//! - Throttling is cost-based: a query over the bucket is answered **HTTP 200** with
//!   `errors[].extensions.code = "THROTTLED"`, no data, and `extensions.cost.throttleStatus`
//!   (`currentlyAvailable`, `restoreRate`) telling when the requested cost is back
//!   (<https://shopify.dev/docs/api/usage/limits>). It is classified as rate-limited with that
//!   delay, exactly like a 429.
//! - `Order.staffMember` (API 2024-07+) needs the `read_users` scope, granted only to Plus and
//!   Advanced shops; it is asked for only when the tenant says so (`[pos] read_staff = true`),
//!   since a field the token may not read fails the query.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};
use url::Url;

use super::{
    Auth, Money, PosConnector, PosHttp, PosItem, PosMatch, PosPurchase, PosSummary, Raw, classify_status,
    to_minor_units,
};
use crate::connectors::ConnectorError;

/// The Admin API version this connector was written against.
pub const DEFAULT_API_VERSION: &str = "2025-10";
/// Latest orders read per lookup (usual items come from these; totals are the shop's own).
const ORDERS: u32 = 25;
/// Line items read per order.
const LINE_ITEMS: u32 = 20;
/// The operation name the query carries (the emulator answers this operation).
pub const OPERATION: &str = "CallsideCallerHistory";

pub struct ShopifyPos {
    base_url: Url,
    version: String,
    read_staff: bool,
    http: PosHttp,
}

impl ShopifyPos {
    /// `base_url` is `https://{shop}.myshopify.com/` (the sandbox's URL in tests).
    pub fn new(base_url: Url, http: PosHttp) -> Self {
        Self { base_url, version: DEFAULT_API_VERSION.to_owned(), read_staff: false, http }
    }

    pub fn with_version(mut self, version: &str) -> Self {
        self.version = version.to_owned();
        self
    }

    /// Asks for each order's staff member (needs `read_users`: Plus and Advanced shops).
    pub fn with_staff(mut self, read_staff: bool) -> Self {
        self.read_staff = read_staff;
        self
    }

    /// The GraphQL document (one operation, variables for everything the caller supplies: no
    /// caller data is ever spliced into the query text).
    pub fn query(read_staff: bool) -> String {
        let staff = if read_staff { "staffMember { firstName }" } else { "" };
        format!(
            "query {OPERATION}($identifier: CustomerIdentifierInput!, $orders: Int!) {{ \
             customerByIdentifier(identifier: $identifier) {{ id firstName numberOfOrders \
             amountSpent {{ amount currencyCode }} \
             orders(first: $orders, sortKey: PROCESSED_AT, reverse: true) {{ pageInfo {{ hasNextPage }} \
             nodes {{ id processedAt totalPriceSet {{ shopMoney {{ amount currencyCode }} }} \
             lineItems(first: {LINE_ITEMS}) {{ nodes {{ name quantity }} }} {staff} }} }} }} }}"
        )
    }

    async fn lookup(&self, identifier: Value) -> Result<PosMatch, ConnectorError> {
        let url = self
            .base_url
            .join(&format!("admin/api/{}/graphql.json", self.version))
            .map_err(|e| ConnectorError::Permanent(format!("Shopify URL: {e}")))?;
        let body = json!({
            "query": Self::query(self.read_staff),
            "operationName": OPERATION,
            "variables": {"identifier": identifier, "orders": ORDERS},
        });
        let raw = self.http.post(url, Auth::Header("X-Shopify-Access-Token"), &[], &body).await?;
        if !raw.status.is_success() {
            return Err(classify_http(&raw, self.http.now()));
        }
        let answer: GraphqlAnswer = serde_json::from_slice(&raw.body).map_err(|_| {
            ConnectorError::Transient(format!("unreadable Shopify response (HTTP {})", raw.status.as_u16()))
        })?;
        let customer = answer.into_result()?;
        Ok(match customer {
            None => PosMatch::NotFound,
            Some(c) => PosMatch::Found(Box::new(c.into_summary())),
        })
    }
}

#[async_trait]
impl PosConnector for ShopifyPos {
    fn vendor(&self) -> &'static str {
        "shopify"
    }

    async fn by_phone(&self, e164: &str) -> Result<PosMatch, ConnectorError> {
        self.lookup(json!({"phoneNumber": e164})).await
    }

    async fn by_email(&self, email: &str) -> Result<PosMatch, ConnectorError> {
        self.lookup(json!({"emailAddress": email})).await
    }
}

#[derive(Deserialize)]
struct GraphqlAnswer {
    #[serde(default)]
    data: Option<Data>,
    #[serde(default)]
    errors: Vec<GraphqlError>,
    #[serde(default)]
    extensions: Option<Extensions>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Data {
    #[serde(default)]
    customer_by_identifier: Option<Customer>,
}

#[derive(Deserialize)]
struct GraphqlError {
    #[serde(default)]
    extensions: Option<ErrorExtensions>,
}

#[derive(Deserialize)]
struct ErrorExtensions {
    #[serde(default)]
    code: Option<String>,
}

#[derive(Deserialize)]
struct Extensions {
    #[serde(default)]
    cost: Option<Cost>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Cost {
    #[serde(default)]
    requested_query_cost: Option<f64>,
    throttle_status: ThrottleStatus,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ThrottleStatus {
    currently_available: f64,
    restore_rate: f64,
}

impl GraphqlAnswer {
    /// The customer (or `None`), or the error the answer carries. A throttled query has no data.
    fn into_result(self) -> Result<Option<Customer>, ConnectorError> {
        let codes: Vec<&str> = self.errors.iter().filter_map(|e| e.extensions.as_ref()?.code.as_deref()).collect();
        if codes.contains(&"THROTTLED") {
            let retry_after = self.extensions.as_ref().and_then(|x| x.cost.as_ref()).and_then(|c| {
                let missing = c.requested_query_cost.unwrap_or(1.0) - c.throttle_status.currently_available;
                (c.throttle_status.restore_rate > 0.0)
                    .then(|| Duration::from_secs_f64((missing.max(0.0) / c.throttle_status.restore_rate).ceil()))
            });
            return Err(ConnectorError::RateLimited { retry_after, detail: "Shopify THROTTLED".into() });
        }
        if !self.errors.is_empty() {
            // Access denied on a field, a bad variable, an internal error: the query as a whole
            // did not answer. Only the codes are kept (messages may echo variables).
            let detail = if codes.is_empty() { "unspecified".to_owned() } else { codes.join(", ") };
            return Err(if codes.contains(&"INTERNAL_SERVER_ERROR") {
                ConnectorError::Transient(format!("Shopify GraphQL error: {detail}"))
            } else {
                ConnectorError::Permanent(format!("Shopify GraphQL error: {detail}"))
            });
        }
        Ok(self.data.and_then(|d| d.customer_by_identifier))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Customer {
    id: String,
    #[serde(default)]
    first_name: Option<String>,
    #[serde(default)]
    number_of_orders: Option<Count>,
    #[serde(default)]
    amount_spent: Option<MoneyV2>,
    orders: Connection<OrderNode>,
}

/// `UnsignedInt64` is a string on the wire; accepted as a number too.
#[derive(Deserialize)]
#[serde(untagged)]
enum Count {
    Text(String),
    Number(u64),
}

impl Count {
    fn value(&self) -> Option<u64> {
        match self {
            Count::Text(s) => s.parse().ok(),
            Count::Number(n) => Some(*n),
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyV2 {
    amount: String,
    currency_code: String,
}

impl MoneyV2 {
    fn to_money(&self) -> Option<Money> {
        Some(Money { minor: to_minor_units(&self.amount, &self.currency_code)?, currency: self.currency_code.clone() })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Connection<T> {
    nodes: Vec<T>,
    #[serde(default)]
    page_info: Option<PageInfo>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PageInfo {
    has_next_page: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderNode {
    id: String,
    #[serde(default)]
    processed_at: Option<Timestamp>,
    #[serde(default)]
    total_price_set: Option<MoneyBag>,
    line_items: Connection<LineItem>,
    #[serde(default)]
    staff_member: Option<Staff>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MoneyBag {
    shop_money: MoneyV2,
}

#[derive(Deserialize)]
struct LineItem {
    name: String,
    quantity: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Staff {
    #[serde(default)]
    first_name: Option<String>,
}

impl Customer {
    fn into_summary(self) -> PosSummary {
        let partial = self.orders.page_info.as_ref().is_some_and(|p| p.has_next_page);
        let purchases = self
            .orders
            .nodes
            .into_iter()
            .map(|o| PosPurchase {
                id: o.id,
                at: o.processed_at,
                items: o
                    .line_items
                    .nodes
                    .into_iter()
                    .map(|l| PosItem { name: l.name, quantity: l.quantity.to_string() })
                    .collect(),
                total: o.total_price_set.and_then(|b| b.shop_money.to_money()),
                staff: o.staff_member.and_then(|s| s.first_name),
            })
            .collect();
        PosSummary::from_purchases(
            "shopify",
            self.id,
            self.first_name,
            purchases,
            self.amount_spent.as_ref().and_then(MoneyV2::to_money),
            self.number_of_orders.as_ref().and_then(Count::value),
            partial,
        )
    }
}

/// A non-2xx answer: Shopify's HTTP-level statuses (401 bad token, 402 frozen shop, 423 locked
/// shop, 429, 5xx).
fn classify_http(raw: &Raw, now: Timestamp) -> ConnectorError {
    let retry_after = raw
        .headers
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::connectors::parse_retry_after(v, now));
    classify_status(raw.status, retry_after, format!("Shopify HTTP {}", raw.status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: Value) -> Result<Option<Customer>, ConnectorError> {
        serde_json::from_value::<GraphqlAnswer>(body).unwrap().into_result()
    }

    #[test]
    fn a_throttled_200_is_rate_limited_until_the_requested_cost_is_restored() {
        let throttled = json!({
            "errors": [{"message": "Throttled", "extensions": {"code": "THROTTLED", "documentation": "https://shopify.dev/api/usage/limits"}}],
            "extensions": {"cost": {"requestedQueryCost": 152, "actualQueryCost": null,
                "throttleStatus": {"maximumAvailable": 2000.0, "currentlyAvailable": 2.0, "restoreRate": 100.0}}}
        });
        match answer(throttled) {
            Err(ConnectorError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, Some(Duration::from_secs(2)), "150 points at 100/s, rounded up")
            }
            other => panic!("{:?}", other.map(|c| c.map(|c| c.id))),
        }
    }

    #[test]
    fn other_graphql_errors_fail_the_lookup_and_null_is_not_found() {
        let denied = json!({"data": null, "errors": [{"message": "Access denied for staffMember field.",
            "extensions": {"code": "ACCESS_DENIED"}}]});
        assert!(
            matches!(answer(denied), Err(ConnectorError::Permanent(m)) if m.contains("ACCESS_DENIED") && !m.contains("staffMember"))
        );
        assert!(matches!(answer(json!({"data": {"customerByIdentifier": null}})), Ok(None)));
    }

    #[test]
    fn a_customer_becomes_a_summary_with_the_shops_own_totals() {
        let got = answer(json!({"data": {"customerByIdentifier": {
        "id": "gid://shopify/Customer/1", "firstName": "Ana", "numberOfOrders": "12",
        "amountSpent": {"amount": "1234.5", "currencyCode": "USD"},
        "orders": {"pageInfo": {"hasNextPage": true}, "nodes": [
            {"id": "gid://shopify/Order/2", "processedAt": "2026-11-02T10:00:00Z",
             "totalPriceSet": {"shopMoney": {"amount": "45.0", "currencyCode": "USD"}},
             "lineItems": {"nodes": [{"name": "Haircut", "quantity": 1}]}, "staffMember": {"firstName": "Marta"}},
            {"id": "gid://shopify/Order/1", "processedAt": "2026-10-02T10:00:00Z",
             "totalPriceSet": {"shopMoney": {"amount": "45.0", "currencyCode": "USD"}},
             "lineItems": {"nodes": [{"name": "Haircut", "quantity": 1}]}}
        ]}}}}))
        .unwrap()
        .unwrap()
        .into_summary();
        assert_eq!(got.visit_count, 12);
        assert_eq!(got.lifetime_spend, Some(Money { minor: 123_450, currency: "USD".into() }));
        assert_eq!(got.usual_items, ["Haircut"]);
        assert_eq!(got.last_staff.as_deref(), Some("Marta"));
        assert!(got.partial_history);
        assert!(ShopifyPos::query(true).contains("staffMember") && !ShopifyPos::query(false).contains("staffMember"));
    }
}
