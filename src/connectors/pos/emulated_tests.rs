//! Both POS connectors against their emulators over real HTTP: the same code that talks to
//! Square and Shopify.

use std::time::Duration;

use secrecy::SecretString;

use super::shopify::ShopifyPos;
use super::square::SquarePos;
use super::{Money, PosConnector, PosHttp, PosMatch};
use crate::connectors::ConnectorError;
use crate::connectors::http_client;
use crate::sandbox::Emulator;
use crate::sandbox::shopify::{self, ShopifyState};
use crate::sandbox::square::{self, DEMO_LOCATION, SquareState};

fn http(token: &str) -> PosHttp {
    PosHttp::new(http_client(), SecretString::from(token.to_owned()))
}

async fn square() -> (Emulator<SquareState>, SquarePos) {
    let sandbox = square::start_on("tok", 0).await.unwrap();
    let pos = SquarePos::new(sandbox.base_url(), vec![DEMO_LOCATION.into()], http("tok"));
    (sandbox, pos)
}

async fn shopify() -> (Emulator<ShopifyState>, ShopifyPos) {
    let sandbox = shopify::start_on("tok", 0).await.unwrap();
    let pos = ShopifyPos::new(sandbox.base_url(), http("tok"));
    (sandbox, pos)
}

fn found(m: PosMatch) -> super::PosSummary {
    match m {
        PosMatch::Found(s) => *s,
        other => panic!("expected a customer, got {other:?}"),
    }
}

#[tokio::test]
async fn square_finds_the_caller_by_any_stored_layout_and_summarizes_every_page() {
    let (sandbox, pos) = square().await;
    let ana = sandbox.state.insert_customer("Ana", "López", Some("ana@example.com"), Some("(415) 555-0134"));
    // More orders than two pages of 500: the connector follows the cursor.
    for i in 0..1001u32 {
        let at: jiff::Timestamp = "2024-01-01T12:00:00Z".parse().unwrap();
        let at = at + jiff::SignedDuration::from_hours(i64::from(i));
        let items: &[(&str, i64)] = if i % 2 == 0 { &[("Haircut", 4500), ("Tip", 500)] } else { &[("Haircut", 4500)] };
        sandbox.state.insert_order(&ana, DEMO_LOCATION, at, items);
    }
    // Another location's order is not this tenant's.
    sandbox.state.add_location("LOTHER");
    sandbox.state.insert_order(&ana, "LOTHER", "2026-01-01T00:00:00Z".parse().unwrap(), &[("Elsewhere", 100)]);
    let s = found(pos.by_phone("+14155550134").await.unwrap());
    assert_eq!(s.customer_id, ana);
    assert_eq!(s.visit_count, 1001);
    assert_eq!(s.lifetime_spend, Some(Money { minor: 1001 * 4500 + 501 * 500, currency: "USD".into() }));
    assert_eq!(s.usual_items, ["Haircut", "Tip"]);
    assert!(!s.partial_history);
    assert_eq!(s.last_purchases.len(), super::LAST_PURCHASES);
    assert_eq!(sandbox.state.faults.requests_to("/v2/orders/search"), 3, "500 + 500 + 1");
    assert!(
        sandbox.state.square_versions().iter().all(|v| v.as_deref() == Some(super::square::DEFAULT_SQUARE_VERSION))
    );
    // By email; an unknown number; a number shared by two profiles.
    assert_eq!(found(pos.by_email("ana@example.com").await.unwrap()).customer_id, ana);
    assert_eq!(pos.by_phone("+14155550199").await.unwrap(), PosMatch::NotFound);
    sandbox.state.insert_customer("Luis", "López", None, Some("+1 415-555-0134"));
    assert_eq!(pos.by_phone("+14155550134").await.unwrap(), PosMatch::Ambiguous(2));
}

#[tokio::test]
async fn square_faults_are_classified() {
    let (sandbox, pos) = square().await;
    sandbox.state.faults.fail_next(429, 1);
    assert!(matches!(pos.by_phone("+14155550134").await, Err(ConnectorError::RateLimited { .. })));
    sandbox.state.faults.set_down(true);
    assert!(matches!(pos.by_phone("+14155550134").await, Err(ConnectorError::Transient(_))));
    sandbox.state.faults.set_down(false);
    let wrong = SquarePos::new(sandbox.base_url(), vec![DEMO_LOCATION.into()], http("nope"));
    assert!(matches!(wrong.by_phone("+14155550134").await, Err(ConnectorError::AuthRevoked(_))));
    assert_eq!(pos.by_phone("+14155550134").await.unwrap(), PosMatch::NotFound, "still serving");
}

#[tokio::test]
async fn shopify_reads_one_customer_with_the_shops_totals_and_handles_throttling() {
    let (sandbox, pos) = shopify().await;
    let ana = sandbox.state.insert_customer("Ana", Some("ana@example.com"), Some("+14155550134"));
    for (day, staff) in [("01", "Sam"), ("08", "Alex"), ("15", "Alex")] {
        let at = format!("2026-11-{day}T15:00:00Z").parse().unwrap();
        sandbox.state.insert_order(&ana, at, &[("Haircut", 6500), ("Deep conditioning", 2500)], Some(staff));
    }
    let s = found(pos.by_phone("+14155550134").await.unwrap());
    assert_eq!((s.customer_id.as_str(), s.visit_count), (ana.as_str(), 3));
    assert_eq!(s.lifetime_spend, Some(Money { minor: 27_000, currency: "USD".into() }));
    assert_eq!(s.usual_items, ["Deep conditioning", "Haircut"]);
    assert_eq!(s.last_staff, None, "staff is not asked for without read_staff");
    assert_eq!(found(pos.by_email("ANA@example.com").await.unwrap()).customer_id, ana);
    assert_eq!(pos.by_phone("+14155550199").await.unwrap(), PosMatch::NotFound);

    // With read_staff on a shop that grants read_users: the last staff member.
    sandbox.state.grant_staff_scope(true);
    let staffed = ShopifyPos::new(sandbox.base_url(), http("tok")).with_staff(true);
    assert_eq!(found(staffed.by_phone("+14155550134").await.unwrap()).last_staff.as_deref(), Some("Alex"));

    // A throttled 200: rate limited, with the delay from the cost extension.
    sandbox.state.throttle_next(1);
    match pos.by_phone("+14155550134").await {
        Err(ConnectorError::RateLimited { retry_after: Some(d), .. }) => assert!(d >= Duration::from_secs(1), "{d:?}"),
        other => panic!("{other:?}"),
    }
    sandbox.state.faults.fail_next(429, 1);
    assert!(matches!(pos.by_phone("+14155550134").await, Err(ConnectorError::RateLimited { .. })));
    let wrong = ShopifyPos::new(sandbox.base_url(), http("nope"));
    assert!(matches!(wrong.by_phone("+14155550134").await, Err(ConnectorError::AuthRevoked(_))));
    assert!(matches!(pos.by_phone("+14155550134").await, Ok(PosMatch::Found(_))), "still serving");
}
