//! Operator authentication for the console: operators and their Argon2id password hashes (PHC
//! strings; a password never appears in a file) live in the server file's `[console]` section;
//! a login creates a server-side session keyed by the SHA-256 of a random token sent as an
//! HttpOnly, SameSite=Strict cookie; each session has its own CSRF token that every POST must
//! echo (form field `csrf` or header `X-CSRF-Token`), compared in constant time.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2};
use base64::Engine as _;
use jiff::{SignedDuration, Timestamp};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::clock::SharedClock;

/// The session cookie's name.
pub const SESSION_COOKIE: &str = "callside_session";
/// The login form's double-submit cookie (there is no session yet to hold a CSRF token).
pub const LOGIN_COOKIE: &str = "callside_login";

/// `[console]` in the server file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConsoleSection {
    /// How long a login lasts.
    pub session_ttl_secs: u64,
    pub operators: Vec<OperatorSection>,
}

impl Default for ConsoleSection {
    fn default() -> Self {
        Self { session_ttl_secs: 8 * 3600, operators: vec![] }
    }
}

/// One operator: an agency person who manages some tenants.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperatorSection {
    pub username: String,
    /// Argon2id PHC string from `callside hash-password` (never the password).
    pub password_argon2: String,
    /// The tenant ids this operator may see and act on.
    pub tenants: Vec<String>,
}

/// Every problem with a `[console]` section, as (key, reason).
pub fn validate(section: &ConsoleSection, tenant_ids: &HashSet<String>) -> Vec<(String, String)> {
    let mut issues = Vec::new();
    if !(60..=7 * 24 * 3600).contains(&section.session_ttl_secs) {
        issues.push(("console.session_ttl_secs".into(), "must be between 60 and 604800".into()));
    }
    let mut names = HashSet::new();
    for (i, op) in section.operators.iter().enumerate() {
        let key = |k: &str| format!("console.operators[{i}].{k}");
        if op.username.trim().is_empty() || op.username.len() > 64 {
            issues.push((key("username"), "must be 1 to 64 characters".into()));
        }
        if !names.insert(op.username.to_lowercase()) {
            issues.push((key("username"), format!("{:?} is used by another operator", op.username)));
        }
        match PasswordHash::new(&op.password_argon2) {
            Ok(h) if h.algorithm == Algorithm::Argon2id.ident() => {}
            Ok(_) => issues.push((key("password_argon2"), "must be an Argon2id hash".into())),
            Err(_) => issues.push((
                key("password_argon2"),
                "must be an Argon2id PHC string from `callside hash-password` (never the password)".into(),
            )),
        }
        if op.tenants.is_empty() {
            issues.push((key("tenants"), "at least one tenant id is required".into()));
        }
        for t in &op.tenants {
            if !tenant_ids.contains(t) {
                issues.push((key("tenants"), format!("{t:?} is not a configured tenant")));
            }
        }
    }
    issues
}

/// The Argon2id PHC string of a password (OWASP's default parameters, the crate's defaults).
pub fn hash_password(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).expect("16 bytes is a valid salt");
    Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 hashes any password").to_string()
}

/// A logged-in operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub operator: String,
    pub tenants: Vec<String>,
    pub csrf: String,
    pub expires_at: Timestamp,
}

impl Session {
    pub fn may_see(&self, tenant: &str) -> bool {
        self.tenants.iter().any(|t| t == tenant)
    }

    /// Constant-time comparison of a presented CSRF token with the session's.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        !presented.is_empty() && bool::from(presented.as_bytes().ct_eq(self.csrf.as_bytes()))
    }
}

/// The operators and the live sessions. Sessions are in memory: a restart logs everyone out.
pub struct Operators {
    operators: Vec<OperatorSection>,
    ttl: SignedDuration,
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    clock: SharedClock,
    /// Verified against when the username is unknown, so timing does not reveal which names exist.
    dummy_hash: String,
}

impl Operators {
    pub fn new(section: &ConsoleSection, clock: SharedClock) -> Self {
        Self {
            operators: section.operators.clone(),
            ttl: SignedDuration::from_secs(section.session_ttl_secs as i64),
            sessions: Mutex::new(HashMap::new()),
            clock,
            dummy_hash: hash_password("not a password anyone has"),
        }
    }

    pub fn enabled(&self) -> bool {
        !self.operators.is_empty()
    }

    /// Checks the credentials (Argon2 on a blocking thread) and opens a session; returns the
    /// session token for the cookie.
    pub async fn login(&self, username: &str, password: &str) -> Option<(String, Session)> {
        let op = self.operators.iter().find(|o| o.username == username).cloned();
        let hash = op.as_ref().map(|o| o.password_argon2.clone()).unwrap_or_else(|| self.dummy_hash.clone());
        let password = password.to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        let op = op.filter(|_| ok)?;
        let token = random_token();
        let session = Session {
            operator: op.username.clone(),
            tenants: op.tenants.clone(),
            csrf: random_token(),
            expires_at: self.clock.now() + self.ttl,
        };
        let mut sessions = self.sessions.lock().expect("session map lock");
        let now = self.clock.now();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(token_key(&token), session.clone());
        Some((token, session))
    }

    /// The live session for a cookie value.
    pub fn session(&self, token: &str) -> Option<Session> {
        let now = self.clock.now();
        let mut sessions = self.sessions.lock().expect("session map lock");
        let key = token_key(token);
        match sessions.get(&key) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn logout(&self, token: &str) {
        self.sessions.lock().expect("session map lock").remove(&token_key(token));
    }
}

/// 32 random bytes, base64url.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn token_key(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// A cookie's value from a `Cookie` header.
pub fn cookie<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A `Set-Cookie` value: HttpOnly, SameSite=Strict, path `/`, `Secure` behind HTTPS.
pub fn set_cookie(name: &str, value: &str, max_age_secs: i64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path=/; Max-Age={max_age_secs}; HttpOnly; SameSite=Strict{secure}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use std::sync::Arc;

    fn section(hash: &str) -> ConsoleSection {
        ConsoleSection {
            session_ttl_secs: 3600,
            operators: vec![OperatorSection {
                username: "ana".into(),
                password_argon2: hash.into(),
                tenants: vec!["demo".into()],
            }],
        }
    }

    #[tokio::test]
    async fn login_checks_the_argon2_hash_and_sessions_expire_on_the_clock() {
        let clock = ManualClock::new("2026-11-23T13:00:00Z".parse().unwrap());
        let ops = Operators::new(&section(&hash_password("correct horse")), Arc::new(clock.clone()));
        assert!(ops.login("ana", "wrong").await.is_none());
        assert!(ops.login("bob", "correct horse").await.is_none());
        let (token, session) = ops.login("ana", "correct horse").await.expect("valid login");
        assert!(session.may_see("demo") && !session.may_see("other"));
        assert!(session.csrf_ok(&session.csrf) && !session.csrf_ok("") && !session.csrf_ok("x"));
        assert_eq!(ops.session(&token).map(|s| s.operator), Some("ana".into()));
        assert!(ops.session("forged").is_none());
        clock.advance(SignedDuration::from_secs(3601));
        assert!(ops.session(&token).is_none(), "expired");
        let (token, _) = ops.login("ana", "correct horse").await.unwrap();
        ops.logout(&token);
        assert!(ops.session(&token).is_none());
    }

    #[test]
    fn validation_names_each_bad_operator_field() {
        let ids: HashSet<String> = ["demo".to_string()].into();
        assert!(validate(&section(&hash_password("pw")), &ids).is_empty());
        let mut bad = section("hunter2");
        bad.operators[0].tenants = vec!["nope".into()];
        bad.operators.push(bad.operators[0].clone());
        bad.session_ttl_secs = 1;
        let keys: Vec<String> = validate(&bad, &ids).into_iter().map(|(k, _)| k).collect();
        assert!(keys.contains(&"console.session_ttl_secs".to_string()), "{keys:?}");
        assert!(keys.contains(&"console.operators[0].password_argon2".to_string()), "{keys:?}");
        assert!(keys.contains(&"console.operators[0].tenants".to_string()), "{keys:?}");
        assert!(keys.contains(&"console.operators[1].username".to_string()), "{keys:?}");
    }

    #[test]
    fn cookies_are_read_from_any_cookie_header() {
        let mut h = axum::http::HeaderMap::new();
        h.append("cookie", "a=1; callside_session=tok".parse().unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "b"), None);
        assert!(set_cookie("n", "v", 10, false).contains("HttpOnly; SameSite=Strict"));
    }
}
