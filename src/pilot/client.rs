//! The pilot's side of the wire: the same WebSocket + MCP tool-call protocol a voice AI speaks
//! (`/v1/calls/ws`, JSON-RPC `tools/call`), and the console's JSON API (`/v1/calls/{id}`, the
//! per-call sync log, and its `resync` / `undo` actions) with the tenant's API key.

use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long one answer from the service may take before the pilot gives up on the call.
const REPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the service is and how to authenticate as the tenant.
#[derive(Clone)]
pub struct ServiceAccess {
    /// `http://host:port` (no trailing slash).
    pub base_url: String,
    /// The tenant's API key (never logged).
    pub api_key: String,
    /// The number the voice AI says was dialed (selects the tenant).
    pub dialed_number: String,
    pub http: reqwest::Client,
}

impl ServiceAccess {
    pub fn new(base_url: &str, api_key: &str, dialed_number: &str) -> Self {
        Self {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key: api_key.to_owned(),
            dialed_number: dialed_number.to_owned(),
            http: reqwest::Client::builder().timeout(REPLY_TIMEOUT).build().expect("an HTTP client"),
        }
    }

    /// Opens one call's WebSocket and completes the MCP handshake.
    pub async fn open_call(&self, call_id: &str, from: &str) -> anyhow::Result<CallClient> {
        let ws_base = self.base_url.replacen("http", "ws", 1);
        let url = format!(
            "{ws_base}/v1/calls/ws?call_id={}&from={}&to={}",
            enc(call_id),
            enc(from),
            enc(&self.dialed_number)
        );
        let mut req = url.into_client_request().context("the call URL")?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mcp"));
        req.headers_mut().insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {}", self.api_key)).context("the API key is not a header value")?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(req).await.with_context(|| format!("opening call {call_id}"))?;
        let mut c = CallClient { ws, next_id: 1 };
        c.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "callside-pilot", "version": env!("CARGO_PKG_VERSION")}}),
        )
        .await?;
        c.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        Ok(c)
    }

    /// The console's record of one call: sync status, steps, attempts, audit (`GET /v1/calls/{id}`).
    pub async fn sync_log(&self, call_id: &str) -> anyhow::Result<Option<Value>> {
        let resp = self
            .http
            .get(format!("{}/v1/calls/{}", self.base_url, enc(call_id)))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .context("reading the sync log")?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            bail!("the sync log answered {}", resp.status());
        }
        Ok(Some(resp.json().await.context("the sync log's JSON")?))
    }

    /// `POST /v1/calls/{id}/{action}` (`resync`, `undo`); the answer's JSON.
    pub async fn action(&self, call_id: &str, action: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .post(format!("{}/v1/calls/{}/{action}", self.base_url, enc(call_id)))
            .bearer_auth(&self.api_key)
            .send()
            .await
            .with_context(|| format!("{action} of {call_id}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{action} of {call_id} answered {status}: {body}");
        }
        Ok(body)
    }
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One live call, as the voice AI holds it.
pub struct CallClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl CallClient {
    async fn send(&mut self, v: Value) -> anyhow::Result<()> {
        self.ws.send(Message::Text(v.to_string().into())).await.context("sending a frame")
    }

    async fn request(&mut self, method: &str, params: Value) -> anyhow::Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await?;
        let read = async {
            loop {
                match self.ws.next().await {
                    None => bail!("the service closed the call during {method}"),
                    Some(Ok(Message::Close(frame))) => bail!(
                        "the service closed the call during {method}: {}",
                        frame.map(|f| format!("{} {}", u16::from(f.code), f.reason)).unwrap_or_default()
                    ),
                    Some(Err(e)) => bail!("the call's socket failed during {method}: {e}"),
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(&t).context("a frame that is not JSON")?;
                        if v.get("id") == Some(&json!(id)) {
                            return Ok(v);
                        }
                        // Notifications (e.g. a refreshed context) are not answers.
                    }
                    Some(Ok(_)) => {}
                }
            }
        };
        let reply = tokio::time::timeout(REPLY_TIMEOUT, read).await.map_err(|_| anyhow!("no answer to {method}"))??;
        if let Some(e) = reply.get("error") {
            bail!("{method} answered a protocol error: {e}");
        }
        Ok(reply["result"].clone())
    }

    /// Calls a tool; returns `(is_error, structuredContent)`.
    pub async fn tool(&mut self, name: &str, args: Value) -> anyhow::Result<(bool, Value)> {
        let r = self.request("tools/call", json!({"name": name, "arguments": args})).await?;
        Ok((r["isError"].as_bool().unwrap_or(false), r["structuredContent"].clone()))
    }

    /// Calls a tool that must succeed; its `structuredContent`.
    pub async fn tool_ok(&mut self, name: &str, args: Value) -> anyhow::Result<Value> {
        match self.tool(name, args).await? {
            (false, v) => Ok(v),
            (true, v) => bail!("{name} answered an error: {v}"),
        }
    }

    /// Closes the socket with a normal close (after `end_call`).
    pub async fn hang_up(mut self) {
        let _ = self.ws.close(None).await;
    }
}
