//! Configuration: every problem is reported at once, with file, key and reason.

use std::path::{Path, PathBuf};

use callside::config::{Config, Overrides};

use crate::helpers::{demo_tenant, repo_path, server_file};

#[test]
fn the_shipped_config_is_valid() {
    let config = Config::load(&repo_path("config/callside.toml"), &Overrides::default()).expect("config/ is valid");
    assert_eq!(config.tenants.len(), 1);
    assert_eq!(config.tenants[0].numbers, vec!["+12125550100".to_owned()]);
}

#[test]
fn every_error_is_reported_with_file_key_and_reason() {
    let mut t = demo_tenant();
    t.time_zone = "Mars/Olympus_Mons".into();
    t.numbers = vec!["call me maybe".into()];
    t.api_key_sha256 = vec!["plaintext-key".into()];
    t.services[0].duration_minutes = 0;
    t.staff[0].hours.insert("funday".into(), vec!["09:00-17:00".into()]);
    t.staff[1].hours.insert("mon".into(), vec!["17:00-09:00".into()]);
    let server = server_file("[limits]\ntool_deadline_ms = 9000\n");
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server,
        vec![(PathBuf::from("tenants/demo.toml"), t)],
        &Overrides { listen: Some("not-an-address".into()), ..Default::default() },
        PathBuf::from("data"),
    )
    .unwrap_err();
    let keys: Vec<(String, String)> =
        err.issues.iter().map(|i| (i.file.display().to_string(), i.key.clone())).collect();
    for (file, key) in [
        ("callside.toml", "server.listen"),
        ("callside.toml", "limits.tool_deadline_ms"),
        ("tenants/demo.toml", "time_zone"),
        ("tenants/demo.toml", "numbers[0]"),
        ("tenants/demo.toml", "api_key_sha256[0]"),
        ("tenants/demo.toml", "services[0].duration_minutes"),
        ("tenants/demo.toml", "staff[0].hours.funday"),
        ("tenants/demo.toml", "staff[1].hours.mon[0]"),
    ] {
        assert!(keys.contains(&(file.to_owned(), key.to_owned())), "missing {file}: {key} in {keys:?}");
    }
    assert_eq!(err.issues.len(), 8, "{err}");
    // The rendered message names each problem on its own line.
    assert_eq!(err.to_string().lines().count(), 9);
}

#[test]
fn unknown_keys_and_syntax_errors_are_reported_not_ignored() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("tenants")).unwrap();
    std::fs::write(dir.path().join("callside.toml"), "[server]\nlisten = \"127.0.0.1:0\"\nlisen = \"typo\"\n").unwrap();
    let err = Config::load(&dir.path().join("callside.toml"), &Overrides::default()).unwrap_err();
    assert!(err.issues[0].reason.contains("unknown field"), "{err}");

    std::fs::write(dir.path().join("callside.toml"), "[server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
    std::fs::write(dir.path().join("tenants/a.toml"), "id = \"a\"\nname = [broken").unwrap();
    std::fs::write(dir.path().join("tenants/b.toml"), "id = \"b\"\n").unwrap();
    let err = Config::load(&dir.path().join("callside.toml"), &Overrides::default()).unwrap_err();
    let files: Vec<String> =
        err.issues.iter().map(|i| i.file.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert!(files.contains(&"a.toml".to_owned()) && files.contains(&"b.toml".to_owned()), "{err}");
}

#[test]
fn a_secret_must_come_from_the_environment() {
    let mut t = demo_tenant();
    t.crm.base_url = "https://api.hubapi.com/".into();
    t.crm.access_token_env = Some("CALLSIDE_TEST_UNSET_VARIABLE_7731".into());
    let err = Config::from_parts(
        Path::new("callside.toml"),
        server_file(""),
        vec![(PathBuf::from("demo.toml"), t)],
        &Overrides::default(),
        PathBuf::from("data"),
    )
    .unwrap_err();
    assert_eq!(err.issues.len(), 1, "{err}");
    assert_eq!(err.issues[0].key, "crm.access_token_env");
    assert!(err.issues[0].reason.contains("CALLSIDE_TEST_UNSET_VARIABLE_7731"));
}

/// `[rate_budgets]`: a URL that is not Redis's, and a timeout out of range, are each reported
/// (the URL's password masked); a Redis URL is taken as given.
#[test]
fn a_rate_budget_url_must_be_redis_and_its_password_is_never_shown() {
    let load = |section: &str| {
        Config::from_parts(
            Path::new("callside.toml"),
            server_file(section),
            vec![(PathBuf::from("demo.toml"), demo_tenant())],
            &Overrides::default(),
            PathBuf::from("data"),
        )
    };
    let err = load("[rate_budgets]\nurl = \"https://user:hunter2@cache.internal:6379\"\ntimeout_ms = 0\n").unwrap_err();
    let keys: Vec<&str> = err.issues.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["rate_budgets.url", "rate_budgets.timeout_ms"], "{err}");
    assert!(err.issues[0].reason.contains("not a Redis URL"), "{err}");
    assert!(!err.to_string().contains("hunter2"), "the password leaked: {err}");

    let config = load("[rate_budgets]\nurl = \"redis://:hunter2@127.0.0.1:6379/2\"\n").unwrap();
    assert_eq!(config.rate_budgets.url, "redis://:hunter2@127.0.0.1:6379/2");
    assert_eq!((config.rate_budgets.key_prefix.as_str(), config.rate_budgets.timeout_ms), ("callside:", 50));
    assert!(!format!("{:?}", config.rate_budgets).contains("hunter2"));
    // No section: no Redis.
    assert!(load("").unwrap().rate_budgets.url.is_empty());
}
