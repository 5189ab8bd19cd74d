//! Point-of-sale connectors: what a business's till knows about a caller — their last purchases,
//! lifetime spend, visit count, usual items and, where the vendor says it, the last staff
//! member who served them. One file per vendor (`square.rs`, `shopify.rs`); the rest of the
//! service sees only [`PosConnector`] and [`PosSummary`].
//!
//! A POS is read-only here and read at ring time only, beside the CRM context
//! (`crate::context`): a connector answers in one or two requests and never waits for the rate
//! budget (live lane, `crate::connectors::rate`).

#[cfg(test)]
mod emulated_tests;
pub mod shopify;
pub mod square;

use std::collections::HashMap;

use async_trait::async_trait;
use jiff::Timestamp;
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::ConnectorError;
use super::rate::Meter;

/// How many past purchases a summary carries (newest first).
pub const LAST_PURCHASES: usize = 3;
/// How many usual items a summary names.
pub const USUAL_ITEMS: usize = 3;

/// An amount in the currency's minor units (cents), as Square stores money; Shopify's decimal
/// strings are converted with [`to_minor_units`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    /// ISO 4217, e.g. `USD`.
    pub currency: String,
}

impl Money {
    /// `$240.00`-style text for the AI (symbol only for the common currencies).
    pub fn spoken(&self) -> String {
        let exp = minor_exponent(&self.currency);
        let major = self.minor as f64 / 10f64.powi(exp as i32);
        let amount = format!("{major:.prec$}", prec = exp as usize);
        match self.currency.as_str() {
            "USD" | "CAD" | "AUD" | "NZD" => format!("${amount}"),
            "EUR" => format!("€{amount}"),
            "GBP" => format!("£{amount}"),
            other => format!("{amount} {other}"),
        }
    }
}

/// One line of a purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosItem {
    pub name: String,
    /// As the vendor gives it (Square quantities are decimal strings, e.g. `1` or `0.5`).
    pub quantity: String,
}

/// One completed purchase.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosPurchase {
    pub id: String,
    pub at: Option<Timestamp>,
    pub items: Vec<PosItem>,
    pub total: Option<Money>,
    /// The staff member who served the purchase, when the vendor records it.
    pub staff: Option<String>,
}

/// What the POS knows about one customer, summarized for the AI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PosSummary {
    pub vendor: String,
    pub customer_id: String,
    /// The customer's first name as the POS has it (compared with the CRM's before the summary is
    /// shown: a shared number may belong to another family member at the till).
    pub first_name: Option<String>,
    /// Newest first, at most [`LAST_PURCHASES`].
    pub last_purchases: Vec<PosPurchase>,
    pub lifetime_spend: Option<Money>,
    /// Completed purchases (visits).
    pub visit_count: u64,
    /// The most frequent items over the history read, most frequent first (items bought at
    /// least twice), at most [`USUAL_ITEMS`].
    pub usual_items: Vec<String>,
    /// The staff member on the most recent purchase that names one.
    pub last_staff: Option<String>,
    /// True when the vendor has more purchases than were read: the usual items come from the
    /// latest ones (and for a vendor without its own totals, Square, the spend and visit count
    /// are lower bounds).
    pub partial_history: bool,
}

impl PosSummary {
    /// Builds a summary from a customer's purchases (any order). `lifetime_spend` and
    /// `visit_count` are the vendor's own figures when it keeps them (Shopify); otherwise they
    /// are computed from the purchases read (Square).
    pub fn from_purchases(
        vendor: &str,
        customer_id: String,
        first_name: Option<String>,
        mut purchases: Vec<PosPurchase>,
        lifetime_spend: Option<Money>,
        visit_count: Option<u64>,
        partial_history: bool,
    ) -> Self {
        purchases.sort_by_key(|p| std::cmp::Reverse(p.at));
        let lifetime_spend = lifetime_spend.or_else(|| sum(&purchases));
        let visit_count = visit_count.unwrap_or(purchases.len() as u64);
        // Counted once per purchase: "usual" is what they come back for, not one big basket.
        let mut counts: HashMap<&str, (usize, usize)> = HashMap::new();
        for (recency, p) in purchases.iter().enumerate() {
            let mut seen = std::collections::HashSet::new();
            for item in &p.items {
                if seen.insert(item.name.as_str()) {
                    let e = counts.entry(item.name.as_str()).or_insert((0, recency));
                    e.0 += 1;
                }
            }
        }
        let mut usual: Vec<(&str, (usize, usize))> = counts.into_iter().filter(|(_, (n, _))| *n >= 2).collect();
        // Most frequent first; ties go to the most recently bought, then the name (stable output).
        usual.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.1.1.cmp(&b.1.1)).then(a.0.cmp(b.0)));
        let usual_items = usual.into_iter().take(USUAL_ITEMS).map(|(n, _)| n.to_owned()).collect();
        let last_staff = purchases.iter().find_map(|p| p.staff.clone());
        purchases.truncate(LAST_PURCHASES);
        PosSummary {
            vendor: vendor.to_owned(),
            customer_id,
            first_name,
            last_purchases: purchases,
            lifetime_spend,
            visit_count,
            usual_items,
            last_staff,
            partial_history,
        }
    }

    /// One speakable sentence for the AI ("Usual: Haircut and Beard trim; last served by
    /// Marta."), or `None` when there is nothing worth saying. It names no amounts: spend is
    /// in the structured summary for the AI to use with care, never read out by default.
    pub fn hint(&self) -> Option<String> {
        let mut parts = Vec::new();
        match self.usual_items.as_slice() {
            [] => {}
            [one] => parts.push(format!("usual: {one}")),
            many => {
                let (last, rest) = many.split_last().expect("at least two");
                parts.push(format!("usual: {} and {last}", rest.join(", ")));
            }
        }
        if let Some(staff) = &self.last_staff {
            parts.push(format!("last served by {staff}"));
        }
        if parts.is_empty()
            && let Some(last) = self.last_purchases.first().and_then(|p| p.items.first())
        {
            parts.push(format!("last bought: {}", last.name));
        }
        if parts.is_empty() {
            return None;
        }
        let mut text = parts.join("; ");
        if let Some(first) = text.get_mut(0..1) {
            first.make_ascii_uppercase();
        }
        Some(format!("{text}."))
    }
}

fn sum(purchases: &[PosPurchase]) -> Option<Money> {
    let mut totals = purchases.iter().filter_map(|p| p.total.as_ref());
    let first = totals.next()?.clone();
    // Mixed currencies cannot be added: no lifetime figure rather than a wrong one.
    totals.try_fold(first, |acc, m| {
        (m.currency == acc.currency).then(|| Money { minor: acc.minor + m.minor, currency: acc.currency })
    })
}

/// The outcome of one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PosMatch {
    Found(Box<PosSummary>),
    NotFound,
    /// Several customer profiles hold this phone or email: none is shown (a shared number).
    Ambiguous(usize),
}

/// One POS vendor.
#[async_trait]
pub trait PosConnector: Send + Sync + 'static {
    fn vendor(&self) -> &'static str;

    /// The customer whose phone is this E.164 number, summarized.
    async fn by_phone(&self, e164: &str) -> Result<PosMatch, ConnectorError>;

    /// The customer with this (normalized) email, summarized.
    async fn by_email(&self, email: &str) -> Result<PosMatch, ConnectorError>;
}

/// How many digits after the decimal point a currency's minor unit has (ISO 4217). Two unless
/// listed.
pub fn minor_exponent(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX" | "UYI" | "VND"
        | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// A decimal amount as text (`"240.0"`, `"19.99"`, `"-3.5"`) in the currency's minor units,
/// without floating point. `None` for anything that is not a plain decimal or that has more
/// precision than the currency (no silent rounding of money).
pub fn to_minor_units(amount: &str, currency: &str) -> Option<i64> {
    let exp = minor_exponent(currency) as usize;
    let amount = amount.trim();
    let (negative, digits) = match amount.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, amount),
    };
    let (whole, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > exp {
        return None;
    }
    let scaled = format!("{whole}{frac:0<exp$}");
    let value: i64 = scaled.parse().ok()?;
    Some(if negative { -value } else { value })
}

pub(crate) use super::Raw;

/// What both POS connectors share: the client, the credential, the rate budget every request
/// is charged to and the clock `Retry-After` dates are read against.
#[derive(Clone)]
pub struct PosHttp {
    client: reqwest::Client,
    token: SecretString,
    meter: Meter,
    clock: crate::clock::SharedClock,
}

impl PosHttp {
    pub fn new(client: reqwest::Client, token: SecretString) -> Self {
        Self { client, token, meter: Meter::unmetered(), clock: std::sync::Arc::new(crate::clock::SystemClock) }
    }

    /// Charges every request to this rate budget.
    pub fn with_meter(mut self, meter: Meter) -> Self {
        self.meter = meter;
        self
    }

    pub fn with_clock(mut self, clock: crate::clock::SharedClock) -> Self {
        self.clock = clock;
        self
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.clock.now()
    }

    /// POSTs JSON with the given auth and extra headers; transport failures are classified.
    pub(crate) async fn post(
        &self,
        url: url::Url,
        auth: Auth,
        headers: &[(&'static str, &str)],
        body: &serde_json::Value,
    ) -> Result<Raw, ConnectorError> {
        let mut request = self.client.post(url).header(reqwest::header::ACCEPT, "application/json").json(body);
        request = match auth {
            Auth::Bearer => request.bearer_auth(self.token.expose_secret()),
            Auth::Header(name) => request.header(name, self.token.expose_secret()),
        };
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        crate::connectors::send_metered(&self.meter, request).await
    }
}

/// Where the credential goes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer …` (Square).
    Bearer,
    /// A vendor header carrying the token as is (Shopify's `X-Shopify-Access-Token`).
    Header(&'static str),
}

/// The classes every vendor shares by HTTP status alone (the vendor files add their bodies'
/// details to `detail`).
pub(crate) fn classify_status(
    status: StatusCode,
    retry_after: Option<std::time::Duration>,
    detail: String,
) -> ConnectorError {
    match status.as_u16() {
        429 => ConnectorError::RateLimited { retry_after, detail },
        401 | 403 => ConnectorError::AuthRevoked(detail),
        404 => ConnectorError::NotFound(detail),
        400 | 422 => ConnectorError::Validation { message: detail, fields: vec![] },
        s if s >= 500 => ConnectorError::Transient(detail),
        _ => ConnectorError::Permanent(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn purchase(id: &str, at: &str, items: &[&str], cents: i64) -> PosPurchase {
        PosPurchase {
            id: id.into(),
            at: Some(at.parse().unwrap()),
            items: items.iter().map(|n| PosItem { name: (*n).into(), quantity: "1".into() }).collect(),
            total: Some(Money { minor: cents, currency: "USD".into() }),
            staff: None,
        }
    }

    #[test]
    fn a_summary_counts_visits_sums_spend_and_names_the_usual_items_by_frequency() {
        let mut purchases = vec![
            purchase("a", "2026-09-01T15:00:00Z", &["Haircut", "Shampoo"], 6500),
            purchase("b", "2026-11-20T15:00:00Z", &["Haircut", "Beard trim"], 7000),
            purchase("c", "2026-10-10T15:00:00Z", &["Haircut", "Beard trim", "Beard trim"], 7000),
            purchase("d", "2026-08-01T15:00:00Z", &["Color"], 12000),
        ];
        purchases[2].staff = Some("Marta".into());
        let s = PosSummary::from_purchases("square", "C1".into(), Some("Ana".into()), purchases, None, None, false);
        assert_eq!(s.visit_count, 4);
        assert_eq!(s.lifetime_spend, Some(Money { minor: 32500, currency: "USD".into() }));
        // Haircut 3 visits, Beard trim 2 (counted once per visit), the rest once: not usual.
        assert_eq!(s.usual_items, vec!["Haircut", "Beard trim"]);
        assert_eq!(s.last_purchases.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(), ["b", "c", "a"]);
        assert_eq!(s.last_staff.as_deref(), Some("Marta"));
        assert_eq!(s.hint().as_deref(), Some("Usual: Haircut and Beard trim; last served by Marta."));
    }

    #[test]
    fn vendor_figures_win_and_mixed_currencies_give_no_total() {
        let mut eur = purchase("b", "2026-11-20T15:00:00Z", &["Tea"], 300);
        eur.total = Some(Money { minor: 300, currency: "EUR".into() });
        let purchases = vec![purchase("a", "2026-11-01T15:00:00Z", &["Tea"], 300), eur];
        let s = PosSummary::from_purchases("x", "C".into(), None, purchases.clone(), None, None, true);
        assert_eq!(s.lifetime_spend, None, "USD + EUR is no amount");
        let vendor = Money { minor: 99_900, currency: "USD".into() };
        let s = PosSummary::from_purchases("x", "C".into(), None, purchases, Some(vendor.clone()), Some(41), true);
        assert_eq!((s.lifetime_spend.clone(), s.visit_count), (Some(vendor), 41));
        assert_eq!(s.hint().as_deref(), Some("Usual: Tea."));
        let single = PosSummary::from_purchases(
            "x",
            "C".into(),
            None,
            vec![purchase("a", "2026-11-01T15:00:00Z", &["Gift card"], 5000)],
            None,
            None,
            false,
        );
        assert_eq!(single.hint().as_deref(), Some("Last bought: Gift card."));
        let empty = PosSummary::from_purchases("x", "C".into(), None, vec![], None, Some(0), false);
        assert_eq!((empty.hint(), empty.lifetime_spend), (None, None));
    }

    #[test]
    fn decimal_amounts_become_minor_units_exactly_or_not_at_all() {
        assert_eq!(to_minor_units("240.0", "USD"), Some(24000));
        assert_eq!(to_minor_units("19.99", "USD"), Some(1999));
        assert_eq!(to_minor_units("7", "EUR"), Some(700));
        assert_eq!(to_minor_units("-3.5", "USD"), Some(-350));
        assert_eq!(to_minor_units("1500.0", "JPY"), Some(1500));
        assert_eq!(to_minor_units("1.234", "KWD"), Some(1234));
        assert_eq!(to_minor_units("1.999", "USD"), None, "no silent rounding");
        for bad in ["", "abc", "1,50", "1.2.3", "--1", ".5", "1e3"] {
            assert_eq!(to_minor_units(bad, "USD"), None, "{bad:?}");
        }
        assert_eq!(Money { minor: 24000, currency: "USD".into() }.spoken(), "$240.00");
        assert_eq!(Money { minor: 1500, currency: "JPY".into() }.spoken(), "1500 JPY");
    }
}
