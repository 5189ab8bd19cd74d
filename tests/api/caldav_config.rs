//! CalDAV in a tenant file and the notification webhook: accepted when complete, and every
//! mistake reported at once with file, key and reason (never a secret in the file).

use std::path::{Path, PathBuf};

use callside::config::{Config, ConfigError, NotificationsSection, Overrides, TenantFile};

use crate::helpers::{demo_tenant, server_file};

/// Set by `.cargo/config.toml` for every process cargo runs (test-only values).
const PASSWORD_ENV: &str = "CALLSIDE_TEST_CALDAV_PASSWORD";
const SECRET_ENV: &str = "CALLSIDE_TEST_WEBHOOK_SECRET";
const UNSET: &str = "CALLSIDE_TEST_UNSET_VARIABLE_5517";

fn caldav_tenant() -> TenantFile {
    toml::from_str(&format!(
        r#"
id = "dav"
name = "Dav Salon"
time_zone = "Europe/Berlin"
numbers = ["+1 212 555 0142"]
api_key_sha256 = ["{digest}"]

[crm]
vendor = "hubspot"
base_url = "sandbox"

[calendar]
vendor = "caldav"
base_url = "https://dav.example.com/remote.php/dav/"
username = "front-desk"
password_env = "{PASSWORD_ENV}"
organizer_email = "bookings@dav-salon.example"

[notifications]
webhook_url = "https://hooks.dav-salon.example/callside"
webhook_secret_env = "{SECRET_ENV}"

[[staff]]
id = "alex"
name = "Alex"
calendar_ids = ["calendars/front-desk/alex/", "https://dav.example.com/remote.php/dav/calendars/front-desk/shared/"]
hours = {{ mon = ["09:00-17:00"] }}

[[services]]
id = "cut"
name = "Cut"
duration_minutes = 30
"#,
        digest = "ab".repeat(32),
    ))
    .expect("the example parses")
}

fn load(t: TenantFile) -> Result<Config, ConfigError> {
    Config::from_parts(
        Path::new("callside.toml"),
        server_file(""),
        vec![(PathBuf::from("tenants/dav.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
}

fn keys(err: &ConfigError) -> Vec<String> {
    err.issues.iter().map(|i| i.key.clone()).collect()
}

#[test]
fn a_complete_caldav_tenant_is_accepted() {
    let config = load(caldav_tenant()).expect("valid");
    let t = &config.tenants[0];
    assert_eq!(t.calendar.vendor, "caldav");
    assert_eq!(t.calendar.password_env.as_deref(), Some(PASSWORD_ENV));
    let hook = t.webhook.as_ref().expect("webhook");
    assert_eq!(hook.url.as_str(), "https://hooks.dav-salon.example/callside");
    assert_eq!(hook.secret_env, SECRET_ENV);
    // No credentials at all is allowed too (a server that needs none).
    let mut t = caldav_tenant();
    t.calendar.username = None;
    t.calendar.password_env = None;
    load(t).expect("unauthenticated CalDAV is valid");
}

#[test]
fn every_caldav_mistake_is_reported_at_once() {
    let mut t = caldav_tenant();
    t.calendar.password = Some("hunter2".into());
    t.calendar.password_env = Some(UNSET.into());
    t.calendar.organizer_email = Some("not an email".into());
    t.calendar.access_token_env = Some(PASSWORD_ENV.into());
    t.staff[0].calendar_ids = vec!["https://elsewhere.example/calendars/alex/".into(), "calendars/ok/".into()];
    let err = load(t).unwrap_err();
    let found = keys(&err);
    for key in [
        "calendar.password",
        "calendar.password_env",
        "calendar.organizer_email",
        "calendar.access_token_env",
        "staff[0].calendar_ids[0]",
    ] {
        assert!(found.contains(&key.to_owned()), "missing {key} in {err}");
    }
    assert_eq!(err.issues.len(), 5, "{err}");
    let password = err.issues.iter().find(|i| i.key == "calendar.password").unwrap();
    assert!(password.reason.contains("environment variable"), "says where the secret goes: {password}");
    assert!(!err.to_string().contains("hunter2"), "the secret is not echoed");
    let env = err.issues.iter().find(|i| i.key == "calendar.password_env").unwrap();
    assert!(env.reason.contains(UNSET), "{env}");

    let mut t = caldav_tenant();
    t.calendar.base_url = "sandbox".into();
    t.calendar.password_env = None;
    let err = load(t).unwrap_err();
    assert_eq!(keys(&err), vec!["calendar.base_url", "calendar.password_env"], "{err}");
    assert!(err.issues[0].reason.contains("no CalDAV sandbox"), "{err}");
}

#[test]
fn notifications_need_an_http_url_and_a_secret_from_the_environment() {
    let mut t = caldav_tenant();
    t.notifications =
        Some(NotificationsSection { webhook_url: "ftp://hooks.example/".into(), webhook_secret_env: UNSET.into() });
    let err = load(t).unwrap_err();
    assert_eq!(keys(&err), vec!["notifications.webhook_url", "notifications.webhook_secret_env"], "{err}");

    // CalDAV cannot notify by itself: asking for cancellation notices needs the webhook.
    let mut t = caldav_tenant();
    t.notifications = None;
    let err = load(t).unwrap_err();
    assert_eq!(keys(&err), vec!["notifications"], "{err}");
    let mut t = caldav_tenant();
    t.notifications = None;
    t.schedule.notify_on_cancel = false;
    load(t).expect("no notices asked for, no webhook needed");
}

#[test]
fn caldav_keys_on_another_calendar_vendor_are_refused() {
    let mut t = demo_tenant();
    t.calendar.username = Some("someone".into());
    t.calendar.organizer_email = Some("a@b.example".into());
    let err = load(t).unwrap_err();
    assert_eq!(keys(&err), vec!["calendar.username", "calendar.organizer_email"], "{err}");
}
