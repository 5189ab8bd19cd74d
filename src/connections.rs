//! Vendor connections: the OAuth 2.0 authorization-code flow with PKCE (RFC 7636, `S256`) and a
//! `state` check, tokens encrypted at rest (AES-256-GCM, a key id stored beside each
//! ciphertext), and refresh that is single-flight per connection.
//!
//! HubSpot specifics (<https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>):
//! the install page is `https://app.hubspot.com/oauth/authorize?client_id&scope&redirect_uri&state`
//! (plus `code_challenge`/`code_challenge_method`, which the token endpoint's `code_verifier`
//! parameter pairs with); `POST /oauth/v1/token` is form-encoded with `grant_type`
//! (`authorization_code` | `refresh_token`), `client_id`, `client_secret`, `redirect_uri`,
//! `code` or `refresh_token`, and answers `{token_type, refresh_token, access_token,
//! expires_in}` (seconds; 30 minutes). An unusable refresh token answers 400 with
//! `"status": "BAD_REFRESH_TOKEN"` (or the OAuth `invalid_grant`): the connection is then marked
//! revoked and surfaces as [`ConnectorError::AuthRevoked`] until it is re-authorized through the
//! same start/callback flow.
//!
//! The store always holds the live tokens: a refresh's answer (including a rotated refresh
//! token) is written back before the new access token is handed out, and the refresh runs under a
//! per-connection lock after re-reading the stored row, so two requests that both saw a 401 cause
//! one refresh, and a restart never presents a retired refresh token. Across instances on one
//! PostgreSQL store the refresh also holds the store's advisory lock on the connection
//! (`Store::lock_connection`), so two instances meeting one expired token refresh it once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jiff::{SignedDuration, Timestamp};
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use crate::clock::SharedClock;
use crate::connectors::ConnectorError;
use crate::store::{ConnectionRow, OAuthStateRow, Store, StoreError};

/// Where a connector gets its bearer token.
#[async_trait]
pub trait TokenSource: Send + Sync + 'static {
    /// The token to send now.
    async fn access_token(&self) -> Result<SecretString, ConnectorError>;

    /// The vendor refused `rejected` as expired: a fresh token. Concurrent callers holding the
    /// same rejected token share one refresh.
    async fn refreshed(&self, rejected: &SecretString) -> Result<SecretString, ConnectorError>;

    /// The API base URL the vendor assigned to this connection in its token answers
    /// (Salesforce's `instance_url`, Pipedrive's `api_domain`); `None`: use the configured base
    /// URL. A refresh may change it, so connectors ask per request (it is one indexed read).
    async fn api_base_url(&self) -> Result<Option<ApiBaseUrl>, ConnectorError> {
        Ok(None)
    }
}

/// An API base URL a vendor assigned to one connection, checked before any bearer token is sent
/// there: HTTPS on a host under one of the app's [`OAuthApp::api_host_suffixes`] (a company or
/// org subdomain, never the bare suffix), or the token endpoint's own origin (the sandbox
/// emulators, which answer both on one loopback port). Only an origin: no path, query or
/// credentials. A tampered or mistaken token answer therefore cannot point the connector at a
/// host outside the vendor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBaseUrl(Url);

impl ApiBaseUrl {
    /// Checks `raw` (from a token answer) against what `app` accepts.
    pub fn accept(app: &OAuthApp, raw: &str) -> Result<Self, String> {
        let url = Url::parse(raw).map_err(|_| "the API base URL in the token answer is not a URL".to_string())?;
        let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
        let same_origin = url.origin() == app.token_url.origin();
        let vendor_host = url.scheme() == "https"
            && app.api_host_suffixes.iter().any(|s| host.len() > s.len() && host.ends_with(&s.to_ascii_lowercase()));
        let origin_only =
            url.path() == "/" && url.query().is_none() && url.username().is_empty() && url.password().is_none();
        if (same_origin || vendor_host) && origin_only {
            Ok(Self(url))
        } else {
            Err(format!("the token answer names {host:?}, which is not an API host of {}", app.vendor))
        }
    }

    /// A value read back from the store (checked when it was stored).
    fn stored(raw: &str) -> Option<Self> {
        Url::parse(raw).ok().map(Self)
    }

    pub fn url(&self) -> &Url {
        &self.0
    }

    pub fn into_url(self) -> Url {
        self.0
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A fixed token (a private-app token, the sandbox's token). It cannot be refreshed.
pub struct StaticToken(SecretString);

impl StaticToken {
    pub fn new(token: SecretString) -> Self {
        Self(token)
    }
}

#[async_trait]
impl TokenSource for StaticToken {
    async fn access_token(&self) -> Result<SecretString, ConnectorError> {
        Ok(self.0.clone())
    }

    async fn refreshed(&self, _rejected: &SecretString) -> Result<SecretString, ConnectorError> {
        Err(ConnectorError::AuthExpired)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("unknown or already used authorization state")]
    UnknownState,
    #[error("the authorization request expired; start again")]
    StateExpired,
    #[error("the authorization callback is for {0}, not this vendor")]
    WrongVendor(String),
    #[error("no connection {0}")]
    NotFound(String),
    #[error("token encryption: {0}")]
    Crypto(String),
    #[error(transparent)]
    Vendor(#[from] ConnectorError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The environment variable holding the token-encryption key (32 bytes, standard base64).
pub const SECRET_KEY_ENV: &str = "CALLSIDE_SECRET_KEY";
/// The previous key during a rotation: read (never written) until `callside reencrypt` has moved
/// every row to the current key.
pub const OLD_SECRET_KEY_ENV: &str = "CALLSIDE_SECRET_KEY_OLD";

/// AES-256-GCM. Each ciphertext is `base64(nonce || ciphertext || tag)` with a random 96-bit
/// nonce, bound to its row and field by the associated data, and stored with the id of the key
/// that sealed it ([`TokenCipher::key_id`]). New ciphertexts use the current key; older rows are
/// read under the old key (if configured) until re-encrypted.
pub struct TokenCipher {
    key_id: String,
    cipher: Aes256Gcm,
    /// Keys accepted for reading only, by key id.
    old: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for TokenCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let old: Vec<&str> = self.old.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("TokenCipher").field("key_id", &self.key_id).field("old", &old).finish_non_exhaustive()
    }
}

/// The key id names the key without revealing it: the first bytes of its SHA-256.
fn key_id_of(key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(key)[..6])
}

fn key_from_base64(raw: &str) -> Result<[u8; 32], ConnectionError> {
    let bytes = STANDARD
        .decode(raw.trim())
        .map_err(|_| ConnectionError::Crypto("the secret key is not valid base64".into()))?;
    bytes.try_into().map_err(|_| ConnectionError::Crypto("the secret key must be 32 bytes".into()))
}

impl TokenCipher {
    pub fn new(key: &[u8; 32]) -> Self {
        Self { key_id: key_id_of(key), cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key)), old: vec![] }
    }

    /// Also reads (never writes) ciphertexts sealed under `key`.
    pub fn with_old_key(mut self, key: &[u8; 32]) -> Self {
        let id = key_id_of(key);
        if id != self.key_id && !self.old.iter().any(|(k, _)| *k == id) {
            self.old.push((id, Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(key))));
        }
        self
    }

    /// Reads the key from [`SECRET_KEY_ENV`] and, during a rotation, the previous one from
    /// [`OLD_SECRET_KEY_ENV`].
    pub fn from_env() -> Result<Self, ConnectionError> {
        let raw = std::env::var(SECRET_KEY_ENV)
            .map_err(|_| ConnectionError::Crypto(format!("{SECRET_KEY_ENV} is not set")))?;
        let old = std::env::var(OLD_SECRET_KEY_ENV).ok().filter(|v| !v.trim().is_empty());
        Self::from_base64_keys(&raw, old.as_deref())
    }

    pub fn from_base64(raw: &str) -> Result<Self, ConnectionError> {
        Ok(Self::new(&key_from_base64(raw)?))
    }

    /// The current key and, optionally, an old one accepted for reading.
    pub fn from_base64_keys(current: &str, old: Option<&str>) -> Result<Self, ConnectionError> {
        let cipher = Self::from_base64(current)?;
        match old {
            None => Ok(cipher),
            Some(old) => {
                let key =
                    key_from_base64(old).map_err(|e| ConnectionError::Crypto(format!("{OLD_SECRET_KEY_ENV}: {e}")))?;
                Ok(cipher.with_old_key(&key))
            }
        }
    }

    /// A random key, for tests and the sandbox.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self::new(&key)
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// Whether ciphertexts under `key_id` can be read.
    pub fn reads(&self, key_id: &str) -> bool {
        key_id == self.key_id || self.old.iter().any(|(k, _)| k == key_id)
    }

    pub fn encrypt(&self, plaintext: &str, aad: &str) -> Result<String, ConnectionError> {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext.as_bytes(), aad: aad.as_bytes() })
            .map_err(|_| ConnectionError::Crypto("encryption failed".into()))?;
        let mut out = nonce.to_vec();
        out.extend(sealed);
        Ok(STANDARD.encode(out))
    }

    pub fn decrypt(&self, key_id: &str, ciphertext: &str, aad: &str) -> Result<SecretString, ConnectionError> {
        let cipher = if key_id == self.key_id {
            &self.cipher
        } else {
            match self.old.iter().find(|(k, _)| k == key_id) {
                Some((_, c)) => c,
                None => {
                    return Err(ConnectionError::Crypto(format!(
                        "encrypted under key {key_id}, which is not configured"
                    )));
                }
            }
        };
        let raw = STANDARD.decode(ciphertext).map_err(|_| ConnectionError::Crypto("corrupt ciphertext".into()))?;
        if raw.len() < 12 {
            return Err(ConnectionError::Crypto("corrupt ciphertext".into()));
        }
        let (nonce, sealed) = raw.split_at(12);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: aad.as_bytes() })
            .map_err(|_| ConnectionError::Crypto("ciphertext does not authenticate".into()))?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| ConnectionError::Crypto("decrypted token is not UTF-8".into()))
    }
}

/// The scopes callside asks HubSpot for, and nothing more: contacts (read/write, which also
/// covers calls, notes, tasks and meetings on them), deals (read/write: open deals, stage
/// changes), tickets (read), owners (read) and contact property definitions (typed writes).
pub const HUBSPOT_SCOPES: [&str; 7] = [
    "crm.objects.contacts.read",
    "crm.objects.contacts.write",
    "crm.objects.deals.read",
    "crm.objects.deals.write",
    "tickets",
    "crm.objects.owners.read",
    "crm.schemas.contacts.read",
];

/// The scopes callside asks Salesforce for: `api` (REST API access to the user's data) and
/// `refresh_token` (offline access; without it the token endpoint issues no refresh token).
/// <https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_tokens_scopes.htm>
pub const SALESFORCE_SCOPES: [&str; 2] = ["api", "refresh_token"];

/// The domains an org's `instance_url` lives under: My Domain hosts such as
/// `acme.my.salesforce.com` (and the older `naNN.salesforce.com` instances), Government Cloud's
/// `.salesforce.mil`, and `.force.com` / `.cloudforce.com` for older org URLs.
/// <https://help.salesforce.com/s/articleView?id=sf.domain_name_url_formats.htm>
/// A Pipedrive company's `api_domain` is a subdomain of this.
pub const PIPEDRIVE_API_HOST_SUFFIX: &str = ".pipedrive.com";

pub const SALESFORCE_API_HOST_SUFFIXES: [&str; 4] =
    [".salesforce.com", ".force.com", ".cloudforce.com", ".salesforce.mil"];

/// How the app authenticates itself at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (HubSpot, Salesforce).
    FormBody,
    /// `Authorization: Basic base64(client_id:client_secret)` (RFC 6749 §2.3.1; Pipedrive).
    HttpBasic,
}

/// An OAuth app registered with a vendor. Config names only the environment variables holding
/// the client id and secret; the tokens live in the store.
#[derive(Debug, Clone)]
pub struct OAuthApp {
    pub vendor: String,
    pub client_id: String,
    pub client_secret: SecretString,
    pub authorize_url: Url,
    pub token_url: Url,
    pub redirect_uri: String,
    pub scopes: Vec<String>,
    /// Host suffixes an API base URL in a token answer may name ([`ApiBaseUrl::accept`]).
    /// Empty: the vendor assigns none, and one in a token answer is ignored (HubSpot).
    pub api_host_suffixes: Vec<String>,
    pub client_auth: ClientAuth,
}

impl OAuthApp {
    /// HubSpot: authorize at `{app_base}/oauth/authorize` (`https://app.hubspot.com`), tokens at
    /// `{api_base}/oauth/v1/token` (`https://api.hubapi.com`).
    pub fn hubspot(
        client_id: &str,
        client_secret: SecretString,
        redirect_uri: &str,
        app_base: &Url,
        api_base: &Url,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            vendor: "hubspot".into(),
            client_id: client_id.into(),
            client_secret,
            authorize_url: app_base.join("oauth/authorize")?,
            token_url: api_base.join("oauth/v1/token")?,
            redirect_uri: redirect_uri.into(),
            scopes: HUBSPOT_SCOPES.iter().map(|s| s.to_string()).collect(),
            api_host_suffixes: Vec::new(),
            client_auth: ClientAuth::FormBody,
        })
    }
}

impl OAuthApp {
    /// Salesforce (a connected app): authorize at `{login}/services/oauth2/authorize` with
    /// `response_type=code` (required by the web server flow; it rides in the authorize URL's
    /// query so the shared start step stays vendor-neutral), tokens at
    /// `{login}/services/oauth2/token`, where `login` is `https://login.salesforce.com`
    /// (`https://test.salesforce.com` for sandboxes, or the org's My Domain).
    /// <https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_web_server_flow.htm>
    pub fn salesforce(
        client_id: &str,
        client_secret: SecretString,
        redirect_uri: &str,
        login_base: &Url,
    ) -> Result<Self, url::ParseError> {
        let mut authorize_url = login_base.join("services/oauth2/authorize")?;
        authorize_url.query_pairs_mut().append_pair("response_type", "code");
        Ok(Self {
            vendor: "salesforce".into(),
            client_id: client_id.into(),
            client_secret,
            authorize_url,
            token_url: login_base.join("services/oauth2/token")?,
            redirect_uri: redirect_uri.into(),
            scopes: SALESFORCE_SCOPES.iter().map(|s| s.to_string()).collect(),
            api_host_suffixes: SALESFORCE_API_HOST_SUFFIXES.iter().map(|s| s.to_string()).collect(),
            client_auth: ClientAuth::FormBody,
        })
    }

    /// The Salesforce connected app whose consumer key and secret are in the named variables.
    pub fn salesforce_from_env(
        client_id_env: &str,
        client_secret_env: &str,
        redirect_uri: &str,
        login_base: &Url,
    ) -> Result<Self, String> {
        let read = |name: &str| std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
        let client_id = read(client_id_env)?;
        let secret = SecretString::from(read(client_secret_env)?);
        Self::salesforce(&client_id, secret, redirect_uri, login_base).map_err(|e| e.to_string())
    }

    /// Pipedrive (<https://pipedrive.readme.io/docs/marketplace-oauth-authorization>): authorize
    /// at `{oauth_base}/oauth/authorize`, tokens from `{oauth_base}/oauth/token` with the client
    /// credentials in HTTP Basic; scopes come from the app's registration, not the URL. Each
    /// token answer names the company's `api_domain` (`https://<company>.pipedrive.com`), the
    /// connection's API base URL.
    pub fn pipedrive(
        client_id: &str,
        client_secret: SecretString,
        redirect_uri: &str,
        oauth_base: &Url,
    ) -> Result<Self, url::ParseError> {
        Ok(Self {
            vendor: "pipedrive".into(),
            client_id: client_id.into(),
            client_secret,
            authorize_url: oauth_base.join("oauth/authorize")?,
            token_url: oauth_base.join("oauth/token")?,
            redirect_uri: redirect_uri.into(),
            scopes: Vec::new(),
            api_host_suffixes: vec![PIPEDRIVE_API_HOST_SUFFIX.into()],
            client_auth: ClientAuth::HttpBasic,
        })
    }

    /// The Pipedrive app whose client id and secret are in the named environment variables.
    pub fn pipedrive_from_env(
        client_id_env: &str,
        client_secret_env: &str,
        redirect_uri: &str,
        oauth_base: &Url,
    ) -> Result<Self, String> {
        let read = |name: &str| std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
        let client_id = read(client_id_env)?;
        let secret = SecretString::from(read(client_secret_env)?);
        Self::pipedrive(&client_id, secret, redirect_uri, oauth_base).map_err(|e| e.to_string())
    }

    /// The HubSpot app whose client id and secret are in the named environment variables (the
    /// tenant config names the variables, never the values).
    pub fn hubspot_from_env(
        client_id_env: &str,
        client_secret_env: &str,
        redirect_uri: &str,
        app_base: &Url,
        api_base: &Url,
    ) -> Result<Self, String> {
        let read = |name: &str| std::env::var(name).map_err(|_| format!("environment variable {name} is not set"));
        let client_id = read(client_id_env)?;
        let secret = SecretString::from(read(client_secret_env)?);
        Self::hubspot(&client_id, secret, redirect_uri, app_base, api_base).map_err(|e| e.to_string())
    }
}

/// The token endpoint's answer (RFC 6749 §5.1; HubSpot's v1 shape).
#[derive(Debug, Deserialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: Option<String>,
    expires_in: Option<u64>,
    /// Salesforce: the org's API host. Its token answers carry no `expires_in` (the session
    /// timeout set in the org decides), so the stored expiry is an estimate and an
    /// `INVALID_SESSION_ID` answer is what triggers the refresh.
    /// <https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm>
    #[serde(default)]
    instance_url: Option<String>,
    /// Pipedrive: the company's API host (`https://<company>.pipedrive.com`).
    /// <https://pipedrive.readme.io/docs/marketplace-oauth-authorization>
    #[serde(default)]
    api_domain: Option<String>,
}

impl TokenResponse {
    /// The API base URL this answer assigns, checked against `app`; `None` when it names none or
    /// the app's vendor assigns none. An unacceptable one fails the whole answer (its tokens are
    /// not stored: they would be sent to that host).
    fn api_base_url(&self, app: &OAuthApp) -> Result<Option<ApiBaseUrl>, ConnectorError> {
        if app.api_host_suffixes.is_empty() {
            return Ok(None);
        }
        match self.instance_url.as_deref().or(self.api_domain.as_deref()) {
            None => Ok(None),
            Some(raw) => ApiBaseUrl::accept(app, raw).map(Some).map_err(ConnectorError::Permanent),
        }
    }
}

/// The token endpoint's error: HubSpot's `{status, message}` or RFC 6749 §5.2 `{error}`.
#[derive(Debug, Default, Deserialize)]
struct TokenError {
    status: Option<String>,
    message: Option<String>,
    error: Option<String>,
    /// RFC 6749 §5.2 (Salesforce: `{"error": "invalid_grant", "error_description": ...}`).
    #[serde(default)]
    error_description: Option<String>,
}

/// How long an authorization request may wait for its callback.
const STATE_TTL: SignedDuration = SignedDuration::from_secs(600);
/// A token this close to its expiry is refreshed before use.
const EXPIRY_MARGIN: SignedDuration = SignedDuration::from_secs(60);

/// A connection as the rest of the service sees it (no tokens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    pub id: String,
    pub tenant: String,
    pub vendor: String,
    pub status: String,
}

pub struct Connections {
    store: Store,
    cipher: Arc<TokenCipher>,
    http: reqwest::Client,
    clock: SharedClock,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Token refreshes by vendor and outcome, as exported on `/metrics` (set once).
    refreshes: std::sync::OnceLock<RefreshCounter>,
}

type RefreshCounter = prometheus_client::metrics::family::Family<
    crate::observe::InboundLabels,
    prometheus_client::metrics::counter::Counter,
>;

pub fn connection_id(tenant: &str, vendor: &str) -> String {
    format!("{tenant}:{vendor}")
}

impl Connections {
    pub fn new(store: Store, cipher: Arc<TokenCipher>, http: reqwest::Client, clock: SharedClock) -> Self {
        Self { store, cipher, http, clock, locks: Mutex::new(HashMap::new()), refreshes: std::sync::OnceLock::new() }
    }

    /// Counts token refreshes (`refreshed`, `revoked`, `failed`) per vendor in this family.
    pub fn export_refreshes(&self, family: RefreshCounter) {
        let _ = self.refreshes.set(family);
    }

    fn count_refresh(&self, vendor: &str, outcome: &str) {
        if let Some(f) = self.refreshes.get() {
            f.get_or_create(&crate::observe::InboundLabels { vendor: vendor.into(), outcome: outcome.into() }).inc();
        }
    }

    /// Step 1: the URL to send the installing user to. Also the re-authorize path for a revoked
    /// connection: its callback replaces the connection's tokens.
    pub async fn start(&self, app: &OAuthApp, tenant: &str) -> Result<Url, ConnectionError> {
        let state = random_token(32);
        let verifier = random_token(64);
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let row = OAuthStateRow {
            verifier_ct: self.cipher.encrypt(&verifier, &format!("oauth_state:{state}"))?,
            state: state.clone(),
            tenant: tenant.into(),
            vendor: app.vendor.clone(),
            key_id: self.cipher.key_id().into(),
            created_at: self.clock.now().as_millisecond(),
        };
        self.store.save_oauth_state(&row).await?;
        let mut url = app.authorize_url.clone();
        // Pipedrive takes its scopes from the app's registration, not from the URL.
        if !app.scopes.is_empty() {
            url.query_pairs_mut().append_pair("scope", &app.scopes.join(" "));
        }
        url.query_pairs_mut()
            .append_pair("client_id", &app.client_id)
            .append_pair("redirect_uri", &app.redirect_uri)
            .append_pair("state", &state)
            .append_pair("code_challenge", &challenge)
            .append_pair("code_challenge_method", "S256");
        Ok(url)
    }

    /// Step 2: the vendor redirected back with `code` and our `state`. The state is single-use
    /// and must be fresh; the code is exchanged with the PKCE verifier; the tokens are stored
    /// encrypted.
    pub async fn callback(&self, app: &OAuthApp, state: &str, code: &str) -> Result<ConnectionInfo, ConnectionError> {
        let pending = self.store.take_oauth_state(state).await?.ok_or(ConnectionError::UnknownState)?;
        let created = Timestamp::from_millisecond(pending.created_at).unwrap_or(Timestamp::UNIX_EPOCH);
        if self.clock.now().duration_since(created) > STATE_TTL {
            return Err(ConnectionError::StateExpired);
        }
        if pending.vendor != app.vendor {
            return Err(ConnectionError::WrongVendor(pending.vendor));
        }
        let verifier =
            self.cipher.decrypt(&pending.key_id, &pending.verifier_ct, &format!("oauth_state:{}", pending.state))?;
        let form = [
            ("grant_type", "authorization_code"),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("code", code),
            ("code_verifier", verifier.expose_secret()),
        ];
        let tokens = self.token_request(app, &form).await?;
        let api_base = tokens.api_base_url(app)?;
        let refresh = tokens
            .refresh_token
            .clone()
            .ok_or_else(|| ConnectorError::Permanent("the token endpoint returned no refresh token".into()))?;
        let id = connection_id(&pending.tenant, &app.vendor);
        let row = ConnectionRow {
            api_base_url: api_base.map(|u| u.as_str().to_owned()),
            ..self.sealed_row(&id, &pending.tenant, &app.vendor, &tokens, &refresh, &app.scopes.join(" "))?
        };
        self.store.upsert_connection(&row).await?;
        Ok(ConnectionInfo { id, tenant: pending.tenant, vendor: app.vendor.clone(), status: "active".into() })
    }

    pub async fn info(&self, id: &str) -> Result<Option<ConnectionInfo>, ConnectionError> {
        Ok(self.store.connection(id).await?.map(|r| ConnectionInfo {
            id: r.id,
            tenant: r.tenant,
            vendor: r.vendor,
            status: r.status,
        }))
    }

    /// A token source for a connector, backed by this connection.
    pub fn token_source(self: &Arc<Self>, app: Arc<OAuthApp>, id: &str) -> Arc<dyn TokenSource> {
        Arc::new(ConnectionTokens { connections: self.clone(), app, id: id.to_string() })
    }

    fn sealed_row(
        &self,
        id: &str,
        tenant: &str,
        vendor: &str,
        tokens: &TokenResponse,
        refresh: &str,
        scopes: &str,
    ) -> Result<ConnectionRow, ConnectionError> {
        let now = self.clock.now();
        let expires = now + SignedDuration::from_secs(tokens.expires_in.unwrap_or(1800).min(i64::MAX as u64) as i64);
        Ok(ConnectionRow {
            id: id.into(),
            tenant: tenant.into(),
            vendor: vendor.into(),
            status: "active".into(),
            key_id: self.cipher.key_id().into(),
            access_token_ct: self.cipher.encrypt(&tokens.access_token, &format!("{id}:access"))?,
            refresh_token_ct: self.cipher.encrypt(refresh, &format!("{id}:refresh"))?,
            expires_at: expires.as_millisecond(),
            scopes: scopes.into(),
            updated_at: now.as_millisecond(),
            // Set by the caller from the checked answer; `None` keeps the stored one.
            api_base_url: None,
        })
    }

    async fn load(&self, id: &str) -> Result<(ConnectionRow, SecretString), ConnectorError> {
        let row = self
            .store
            .connection(id)
            .await
            .map_err(|e| ConnectorError::Transient(format!("reading the connection: {e}")))?
            .ok_or_else(|| ConnectorError::AuthRevoked(format!("no connection {id}; authorize it first")))?;
        if row.status == "revoked" {
            return Err(ConnectorError::AuthRevoked(format!("connection {id} was revoked; re-authorize it")));
        }
        let access = self
            .cipher
            .decrypt(&row.key_id, &row.access_token_ct, &format!("{id}:access"))
            .map_err(|e| ConnectorError::Permanent(e.to_string()))?;
        Ok((row, access))
    }

    fn lock_for(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default().clone()
    }

    /// Refreshes unless someone already did: under the per-connection lock the stored row is
    /// read again, and if its access token is no longer the rejected one (and not about to
    /// expire) that token is returned without calling the vendor.
    ///
    /// Across instances on one PostgreSQL store the same happens under the store's advisory lock
    /// on the connection ([`Store::lock_connection`]), taken after the in-process lock (so one
    /// instance holds at most one pool connection per refreshing connection) and held until the
    /// refreshed tokens are stored: the instance that waited re-reads the row the other one wrote.
    async fn refresh(
        &self,
        app: &OAuthApp,
        id: &str,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, ConnectorError> {
        let lock = self.lock_for(id);
        let _guard = lock.lock().await;
        let shared = self
            .store
            .lock_connection(id)
            .await
            .map_err(|e| ConnectorError::Transient(format!("locking the connection for a refresh: {e}")))?;
        let result = self.refresh_locked(app, id, rejected).await;
        shared.release().await;
        result
    }

    async fn refresh_locked(
        &self,
        app: &OAuthApp,
        id: &str,
        rejected: Option<&SecretString>,
    ) -> Result<SecretString, ConnectorError> {
        let (row, current) = self.load(id).await?;
        let fresh = Timestamp::from_millisecond(row.expires_at).is_ok_and(|at| at - EXPIRY_MARGIN > self.clock.now());
        let superseded = rejected.is_some_and(|r| r.expose_secret() != current.expose_secret());
        if superseded || (rejected.is_none() && fresh) {
            return Ok(current);
        }
        let refresh = self
            .cipher
            .decrypt(&row.key_id, &row.refresh_token_ct, &format!("{id}:refresh"))
            .map_err(|e| ConnectorError::Permanent(e.to_string()))?;
        let form = [
            ("grant_type", "refresh_token"),
            ("redirect_uri", app.redirect_uri.as_str()),
            ("refresh_token", refresh.expose_secret()),
        ];
        let tokens = match self.token_request(app, &form).await {
            Ok(tokens) => {
                self.count_refresh(&row.vendor, "refreshed");
                tokens
            }
            Err(ConnectorError::AuthRevoked(reason)) => {
                self.count_refresh(&row.vendor, "revoked");
                let _ = self.store.set_connection_status(id, "revoked", self.clock.now().as_millisecond()).await;
                tracing::warn!(connection = %id, "refresh token refused; the connection must be re-authorized");
                return Err(ConnectorError::AuthRevoked(reason));
            }
            Err(e) => {
                self.count_refresh(&row.vendor, "failed");
                return Err(e);
            }
        };
        // An answer naming a host the app does not accept is not used at all: the stored tokens
        // stay as they were.
        let api_base = tokens.api_base_url(app)?;
        // A rotated refresh token replaces the old one; otherwise the old one stays.
        let next_refresh = tokens.refresh_token.clone().unwrap_or_else(|| refresh.expose_secret().to_string());
        let sealed = ConnectionRow {
            api_base_url: api_base.map(|u| u.as_str().to_owned()),
            ..self
                .sealed_row(id, &row.tenant, &row.vendor, &tokens, &next_refresh, &row.scopes)
                .map_err(|e| ConnectorError::Permanent(e.to_string()))?
        };
        // Stored before use: a crash after this point restarts with the live tokens.
        self.store
            .upsert_connection(&sealed)
            .await
            .map_err(|e| ConnectorError::Transient(format!("storing the refreshed token: {e}")))?;
        Ok(SecretString::from(tokens.access_token))
    }

    /// The API base URL stored with the connection's tokens, if the vendor assigned one.
    pub async fn api_base_url(&self, id: &str) -> Result<Option<ApiBaseUrl>, ConnectorError> {
        let row = self
            .store
            .connection(id)
            .await
            .map_err(|e| ConnectorError::Transient(format!("reading the connection: {e}")))?;
        Ok(row.and_then(|r| r.api_base_url).as_deref().and_then(ApiBaseUrl::stored))
    }

    async fn token_request(&self, app: &OAuthApp, form: &[(&str, &str)]) -> Result<TokenResponse, ConnectorError> {
        let request = self.http.post(app.token_url.clone());
        let request = match app.client_auth {
            ClientAuth::FormBody => {
                let mut with_client: Vec<(&str, &str)> =
                    vec![("client_id", app.client_id.as_str()), ("client_secret", app.client_secret.expose_secret())];
                with_client.extend_from_slice(form);
                request.form(&with_client)
            }
            ClientAuth::HttpBasic => {
                request.basic_auth(&app.client_id, Some(app.client_secret.expose_secret())).form(form)
            }
        };
        let response = request.send().await.map_err(|e| ConnectorError::from_transport(&e))?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| ConnectorError::from_transport(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|_| ConnectorError::Transient("unreadable token endpoint response".into()));
        }
        let error: TokenError = serde_json::from_slice(&body).unwrap_or_default();
        Err(classify_token_error(status.as_u16(), &error))
    }
}

fn classify_token_error(status: u16, error: &TokenError) -> ConnectorError {
    let code = error.status.as_deref().or(error.error.as_deref()).unwrap_or_default().to_string();
    let message =
        error.message.clone().or_else(|| error.error_description.clone()).unwrap_or_else(|| format!("HTTP {status}"));
    match (status, code.as_str()) {
        (429, _) => ConnectorError::RateLimited { retry_after: None, detail: "token endpoint".into() },
        (500..=599, _) => ConnectorError::Transient(format!("token endpoint answered HTTP {status}")),
        (_, "BAD_REFRESH_TOKEN" | "invalid_grant" | "BAD_AUTH_CODE") => {
            ConnectorError::AuthRevoked(format!("{code}: {message}"))
        }
        (_, "BAD_CLIENT_ID" | "invalid_client") => ConnectorError::Permanent(format!("{code}: {message}")),
        (401 | 403, _) => ConnectorError::AuthRevoked(format!("{code}: {message}")),
        _ => ConnectorError::Permanent(format!("token endpoint HTTP {status}: {code} {message}")),
    }
}

fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

struct ConnectionTokens {
    connections: Arc<Connections>,
    app: Arc<OAuthApp>,
    id: String,
}

#[async_trait]
impl TokenSource for ConnectionTokens {
    async fn access_token(&self) -> Result<SecretString, ConnectorError> {
        let (row, access) = self.connections.load(&self.id).await?;
        let now = self.connections.clock.now();
        let expiring = Timestamp::from_millisecond(row.expires_at).is_ok_and(|at| at - EXPIRY_MARGIN <= now);
        if expiring { self.connections.refresh(&self.app, &self.id, None).await } else { Ok(access) }
    }

    async fn refreshed(&self, rejected: &SecretString) -> Result<SecretString, ConnectorError> {
        self.connections.refresh(&self.app, &self.id, Some(rejected)).await
    }

    async fn api_base_url(&self) -> Result<Option<ApiBaseUrl>, ConnectorError> {
        if self.app.api_host_suffixes.is_empty() {
            return Ok(None);
        }
        self.connections.api_base_url(&self.id).await
    }
}

/// What `callside reencrypt` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReencryptReport {
    /// Connections whose tokens now are under the current key.
    pub connections: usize,
    /// Pending authorization requests re-encrypted.
    pub oauth_states: usize,
    /// Rows under a key that is neither current nor old: left as they are (ids only).
    pub unreadable: Vec<String>,
}

/// Re-encrypts every stored ciphertext that is not under the current key (tokens of
/// connections, PKCE verifiers of pending authorizations). Each row is replaced only if it is
/// still what was read (a refresh in a running service meanwhile wins: its row is already under
/// the current key). Safe to run again; a second run finds nothing to do.
pub async fn reencrypt(store: &Store, cipher: &TokenCipher) -> Result<ReencryptReport, ConnectionError> {
    let mut report = ReencryptReport::default();
    for row in store.connections_not_under(cipher.key_id()).await? {
        if !cipher.reads(&row.key_id) {
            report.unreadable.push(row.id.clone());
            continue;
        }
        let access = cipher.decrypt(&row.key_id, &row.access_token_ct, &format!("{}:access", row.id))?;
        let refresh = cipher.decrypt(&row.key_id, &row.refresh_token_ct, &format!("{}:refresh", row.id))?;
        let access_ct = cipher.encrypt(access.expose_secret(), &format!("{}:access", row.id))?;
        let refresh_ct = cipher.encrypt(refresh.expose_secret(), &format!("{}:refresh", row.id))?;
        if store.reseal_connection(&row, cipher.key_id(), &access_ct, &refresh_ct).await? {
            report.connections += 1;
        }
    }
    for row in store.oauth_states_not_under(cipher.key_id()).await? {
        if !cipher.reads(&row.key_id) {
            report.unreadable.push(format!("oauth_state of {}:{}", row.tenant, row.vendor));
            continue;
        }
        let aad = format!("oauth_state:{}", row.state);
        let verifier = cipher.decrypt(&row.key_id, &row.verifier_ct, &aad)?;
        let ct = cipher.encrypt(verifier.expose_secret(), &aad)?;
        if store.reseal_oauth_state(&row, cipher.key_id(), &ct).await? {
            report.oauth_states += 1;
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertexts_authenticate_their_row_and_key() {
        let cipher = TokenCipher::generate();
        let sealed = cipher.encrypt("secret-token", "t:hubspot:access").unwrap();
        assert!(!sealed.contains("secret-token"));
        let opened = cipher.decrypt(cipher.key_id(), &sealed, "t:hubspot:access").unwrap();
        assert_eq!(opened.expose_secret(), "secret-token");
        assert!(cipher.decrypt(cipher.key_id(), &sealed, "other:hubspot:access").is_err(), "bound to its row");
        assert!(TokenCipher::generate().decrypt(cipher.key_id(), &sealed, "t:hubspot:access").is_err());
        assert!(cipher.decrypt("another-key", &sealed, "t:hubspot:access").is_err());
    }

    /// Key rotation: rows sealed under the old key are read while `CALLSIDE_SECRET_KEY_OLD` names
    /// it, `reencrypt` moves them to the current key (the raw row never holds a token), rows under
    /// an unknown key are reported and left alone, and a second run has nothing to do.
    #[tokio::test]
    async fn rotation_reads_the_old_key_and_reencrypt_moves_every_row_to_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}", dir.path().join("t.db").display())).await.unwrap();
        let (k_old, k_new, k_lost) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        let b64 = |k: &[u8; 32]| STANDARD.encode(k);
        let old = TokenCipher::new(&k_old);
        let seal = |cipher: &TokenCipher, id: &str, access: &str, refresh: &str| ConnectionRow {
            id: id.into(),
            tenant: id.split(':').next().unwrap().into(),
            vendor: "hubspot".into(),
            status: "active".into(),
            key_id: cipher.key_id().into(),
            access_token_ct: cipher.encrypt(access, &format!("{id}:access")).unwrap(),
            refresh_token_ct: cipher.encrypt(refresh, &format!("{id}:refresh")).unwrap(),
            expires_at: 0,
            scopes: "crm".into(),
            updated_at: 0,
            api_base_url: None,
        };
        store.upsert_connection(&seal(&old, "a:hubspot", "access-plain-a1", "refresh-plain-a2")).await.unwrap();
        store
            .upsert_connection(&seal(&TokenCipher::new(&k_lost), "b:hubspot", "access-plain-b1", "refresh-plain-b2"))
            .await
            .unwrap();
        store
            .save_oauth_state(&OAuthStateRow {
                state: "st1".into(),
                tenant: "a".into(),
                vendor: "hubspot".into(),
                key_id: old.key_id().into(),
                verifier_ct: old.encrypt("verifier-plain-1", "oauth_state:st1").unwrap(),
                created_at: 0,
            })
            .await
            .unwrap();

        // Without the old key the new one cannot read the row; with it, it can.
        let new_only = TokenCipher::from_base64(&b64(&k_new)).unwrap();
        let row = store.connection("a:hubspot").await.unwrap().unwrap();
        assert!(new_only.decrypt(&row.key_id, &row.access_token_ct, "a:hubspot:access").is_err());
        let rotating = TokenCipher::from_base64_keys(&b64(&k_new), Some(&b64(&k_old))).unwrap();
        let read = rotating.decrypt(&row.key_id, &row.access_token_ct, "a:hubspot:access").unwrap();
        assert_eq!(read.expose_secret(), "access-plain-a1");
        assert!(TokenCipher::from_base64_keys(&b64(&k_new), Some("short")).is_err(), "a bad old key is an error");

        let report = reencrypt(&store, &rotating).await.unwrap();
        assert_eq!(
            report,
            ReencryptReport { connections: 1, oauth_states: 1, unreadable: vec!["b:hubspot".to_owned()] }
        );
        // Now the new key alone reads everything that was readable.
        let row = store.connection("a:hubspot").await.unwrap().unwrap();
        assert_eq!(row.key_id, new_only.key_id());
        assert_eq!(
            new_only.decrypt(&row.key_id, &row.access_token_ct, "a:hubspot:access").unwrap().expose_secret(),
            "access-plain-a1"
        );
        assert_eq!(
            new_only.decrypt(&row.key_id, &row.refresh_token_ct, "a:hubspot:refresh").unwrap().expose_secret(),
            "refresh-plain-a2"
        );
        let state = store.take_oauth_state("st1").await.unwrap().unwrap();
        assert_eq!(
            new_only.decrypt(&state.key_id, &state.verifier_ct, "oauth_state:st1").unwrap().expose_secret(),
            "verifier-plain-1"
        );
        let untouched = store.connection("b:hubspot").await.unwrap().unwrap();
        assert_eq!(untouched.key_id, TokenCipher::new(&k_lost).key_id(), "an unreadable row is left as it was");
        // The raw rows hold no token in any column.
        let raw = store.raw_connection_columns().await.unwrap();
        assert_eq!(raw.len(), 2);
        for cell in raw.iter().flatten() {
            assert!(!cell.contains("plain"), "a token in the raw row: {cell}");
        }
        // Idempotent.
        let again = reencrypt(&store, &rotating).await.unwrap();
        assert_eq!((again.connections, again.oauth_states), (0, 0));
    }

    #[test]
    fn keys_are_read_as_32_bytes_of_base64() {
        let key = STANDARD.encode([7u8; 32]);
        let a = TokenCipher::from_base64(&key).unwrap();
        let b = TokenCipher::from_base64(&key).unwrap();
        assert_eq!(a.key_id(), b.key_id());
        let sealed = a.encrypt("x", "aad").unwrap();
        assert_eq!(b.decrypt(b.key_id(), &sealed, "aad").unwrap().expose_secret(), "x");
        assert!(TokenCipher::from_base64(&STANDARD.encode([1u8; 16])).is_err());
        assert!(TokenCipher::from_base64("not base64!").is_err());
    }

    #[test]
    fn token_endpoint_errors_are_classified() {
        let bad_refresh = TokenError {
            status: Some("BAD_REFRESH_TOKEN".into()),
            message: Some("missing or invalid refresh token".into()),
            error: None,
            error_description: None,
        };
        assert!(matches!(classify_token_error(400, &bad_refresh), ConnectorError::AuthRevoked(_)));
        let grant = TokenError { error: Some("invalid_grant".into()), ..TokenError::default() };
        assert!(matches!(classify_token_error(400, &grant), ConnectorError::AuthRevoked(_)));
        assert!(matches!(classify_token_error(502, &TokenError::default()), ConnectorError::Transient(_)));
    }

    /// The BAD_REFRESH_TOKEN body as reported for HubSpot's token endpoint
    /// (<https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>
    /// lists the endpoint; the body is the one HubSpot returns for an unusable refresh token).
    #[test]
    fn golden_bad_refresh_token_body() {
        let body = r#"{"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"}"#;
        let parsed: TokenError = serde_json::from_str(body).unwrap();
        assert!(matches!(classify_token_error(400, &parsed), ConnectorError::AuthRevoked(_)));
    }

    /// The token answer of Pipedrive's OAuth guide
    /// (<https://pipedrive.readme.io/docs/marketplace-oauth-authorization>, "Step 3: Getting
    /// the tokens"): it names the company's `api_domain`, the connection's API base URL.
    #[test]
    fn golden_pipedrive_token_response_names_an_accepted_api_domain() {
        let body = r#"{
          "access_token": "v1u:AQIBAHj+LzTNK2yuuuaLqifzhWb9crUNKTpk4FlQ9rjnXqp/6Q",
          "token_type": "Bearer",
          "refresh_token": "10000:10001:30a8a0ddca64a5279bde8bc8ae8b1cd5be9c7f7e",
          "scope": "base,deals:full",
          "expires_in": 3599,
          "api_domain": "https://company.pipedrive.com"
        }"#;
        let parsed: TokenResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.expires_in, Some(3599));
        let app = OAuthApp::pipedrive(
            "id",
            SecretString::from("secret"),
            "https://callside.example.com/cb",
            &Url::parse("https://oauth.pipedrive.com/").unwrap(),
        )
        .unwrap();
        assert_eq!(app.token_url.as_str(), "https://oauth.pipedrive.com/oauth/token");
        assert_eq!(app.client_auth, ClientAuth::HttpBasic);
        let base = parsed.api_base_url(&app).unwrap().unwrap();
        assert_eq!(base.as_str(), "https://company.pipedrive.com/");
        for bad in ["https://pipedrive.com.evil.example", "http://company.pipedrive.com", "https://evil.example"] {
            assert!(ApiBaseUrl::accept(&app, bad).is_err(), "{bad} accepted");
        }
        // A Salesforce app does not take a Pipedrive host, nor the other way round.
        assert!(ApiBaseUrl::accept(&app, "https://acme.my.salesforce.com").is_err());
        assert!(
            ApiBaseUrl::accept(&salesforce_app("https://login.salesforce.com/"), "https://company.pipedrive.com")
                .is_err()
        );
    }

    /// The token response example of HubSpot's v1 OAuth tokens guide
    /// (<https://developers.hubspot.com/docs/api-reference/legacy/authentication/oauth-tokens/v1/guide>,
    /// "Generate initial access and refresh tokens").
    #[test]
    fn golden_token_response() {
        let body = r#"{
          "token_type": "bearer",
          "refresh_token": "1e8fbfb1-8e96-4826-8b8d-c8af73715",
          "access_token": "CIrToaiiMhIHAAEAQAAAARiO1ooBIOP0sgEokNIEMgEAOgEAQgEAUhUAGwGBUv-8hwyTfzRvZTbRRL5sxiRaAA",
          "expires_in": 1800
        }"#;
        let parsed: TokenResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.expires_in, Some(1800));
        assert_eq!(parsed.refresh_token.as_deref(), Some("1e8fbfb1-8e96-4826-8b8d-c8af73715"));
        assert!(parsed.access_token.starts_with("CIrToaiiMhIH"));
    }

    /// A refresh answer shaped as in Salesforce's refresh token flow
    /// (<https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_flow.htm>):
    /// `instance_url`, `id`, `issued_at` (ms, as a string) and `signature`, no `expires_in`, no
    /// new refresh token unless rotation is on.
    #[test]
    fn golden_salesforce_refresh_response() {
        let body = r#"{ "access_token": "00DB0000000TfcR!AQQAQFhoK8vTMg_rKA.esrJ2bCs.OOIjJgl.9Cx6O7KqjZmHMLOyVb.U61BU9tm4xRusf7d3fD1P9oefzqS6i9sJMPWj48IK",
          "signature": "d/SxeYBxH0GSVko0HMgcUxuZy0PA2cDDz1u7g7JtDHw=",
          "scope": "web openid api id",
          "instance_url": "https://yourInstance.salesforce.com",
          "id": "https://login.salesforce.com/id/00DB0000000TfcRMAS/005B0000005Bk90IAC",
          "token_type": "Bearer",
          "issued_at": "1399329718587" }"#;
        let parsed: TokenResponse = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.expires_in, None);
        assert_eq!(parsed.refresh_token, None);
        assert_eq!(parsed.instance_url.as_deref(), Some("https://yourInstance.salesforce.com"));
        let app = salesforce_app("https://login.salesforce.com/");
        let base = parsed.api_base_url(&app).unwrap().expect("Salesforce assigns the instance URL");
        assert_eq!(base.as_str(), "https://yourinstance.salesforce.com/");
        // HubSpot assigns none: the same field in its answer would be ignored.
        let hubspot = OAuthApp::hubspot(
            "id",
            SecretString::from("secret"),
            "https://callside.example.com/cb",
            &Url::parse("https://app.hubspot.com/").unwrap(),
            &Url::parse("https://api.hubapi.com/").unwrap(),
        )
        .unwrap();
        assert_eq!(parsed.api_base_url(&hubspot).unwrap(), None);
    }

    fn salesforce_app(login: &str) -> OAuthApp {
        OAuthApp::salesforce(
            "id",
            SecretString::from("secret"),
            "https://callside.example.com/cb",
            &Url::parse(login).unwrap(),
        )
        .unwrap()
    }

    /// Salesforce's token endpoint errors are RFC 6749 bodies; an expired or revoked refresh
    /// token is `invalid_grant` with `expired access/refresh token`.
    #[test]
    fn golden_salesforce_invalid_grant() {
        let body = r#"{"error":"invalid_grant","error_description":"expired access/refresh token"}"#;
        let parsed: TokenError = serde_json::from_str(body).unwrap();
        match classify_token_error(400, &parsed) {
            ConnectorError::AuthRevoked(m) => assert!(m.contains("expired access/refresh token"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    /// The bearer token only goes to an HTTPS host of the vendor, or to the token endpoint's own
    /// origin (the sandbox emulator on loopback).
    #[test]
    fn api_base_urls_must_be_the_vendors_hosts_or_the_token_endpoints_origin() {
        let app = salesforce_app("https://login.salesforce.com/");
        assert!(ApiBaseUrl::accept(&app, "https://acme.my.salesforce.com").is_ok());
        assert!(ApiBaseUrl::accept(&app, "https://login.salesforce.com").is_ok());
        for bad in [
            "http://acme.my.salesforce.com",       // not HTTPS
            "https://salesforce.com.evil.example", // suffix elsewhere in the name
            "https://evil.example.com",
            "https://.salesforce.com",
            "https://acme.my.salesforce.com/services/data", // not an origin
            "https://user:pw@acme.my.salesforce.com",
            "http://127.0.0.1:8080/", // loopback, but not the token endpoint's origin
            "not a url",
        ] {
            assert!(ApiBaseUrl::accept(&app, bad).is_err(), "{bad} accepted");
        }
        let sandbox = salesforce_app("http://127.0.0.1:8080/");
        assert!(ApiBaseUrl::accept(&sandbox, "http://127.0.0.1:8080").is_ok());
        assert!(ApiBaseUrl::accept(&sandbox, "http://127.0.0.1:8081").is_err());
    }
}
