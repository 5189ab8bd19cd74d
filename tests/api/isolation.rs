//! Tenant isolation, as a matrix: tenant A ("other") holds valid credentials of its own — its API
//! key, its Vapi secret, an operator login — and aims each at tenant B's ("demo") resources over
//! every surface: the call WebSocket, MCP over HTTP, the Vapi server URL, the REST API
//! (`/v1/calls…`, `/v1/writeback/…`), the console pages and the inbound webhook. Every attempt
//! must be refused (its status pinned per row), no answer may carry B's data, and B's calls,
//! write-back and live sessions must be exactly as they were afterwards.

use reqwest::Method;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

use crate::console::{ANA_PASSWORD, BO_PASSWORD, Browser, seed_call};
use crate::helpers::*;

/// A's (the attacker's) own Vapi secret; B's is the demo's.
const OTHER_VAPI: &str = OTHER_VAPI_SECRET;
const DEMO_VAPI: &str = "vapi_demo_not_secret_3f8e1b";
const PORTAL: u64 = 4242;
const SECRET_ENV: &str = "CALLSIDE_TEST_HUBSPOT_APP_SECRET";
/// B's resources: a written-back call, and one live call per transport.
const B_DONE: &str = "b-done-1";
const B_WS: &str = "b-live-ws";
const B_MCP: &str = "b-live-mcp";
const B_VAPI: &str = "b-live-vapi";
const ANA: &str = "+14155550134";
/// What must never appear in an answer to A: B's callers and B's name.
const B_SECRETS: [&str; 5] = ["4155550134", "2125550111", "Demo Salon", "Ana", "López"];

enum Via {
    Bearer,
    Query,
    Subprotocol,
}

enum Auth {
    None,
    Bearer(&'static str),
    VapiSecret(&'static str),
    /// Operator bo (A's agency): session cookie + CSRF token (header and form field).
    Operator,
}

enum Req {
    Ws { call_id: &'static str, to: &'static str, key: &'static str, via: Via },
    Http { method: Method, path: String, auth: Auth, body: Option<Value>, extra: Vec<(&'static str, String)> },
}

enum Expect {
    Status(u16),
    /// HTTP 200 whose body names the refusal (tool errors are results, not HTTP errors).
    Refused(&'static str),
}

struct Row {
    surface: &'static str,
    what: &'static str,
    req: Req,
    expect: Expect,
}

fn http(method: Method, path: impl Into<String>, auth: Auth) -> Req {
    Req::Http { method, path: path.into(), auth, body: None, extra: vec![] }
}

fn row(surface: &'static str, what: &'static str, req: Req, expect: Expect) -> Row {
    Row { surface, what, req, expect }
}

/// An MCP request of the stateless era (no session: the call is named by `call_id`).
fn mcp(auth: Auth, tool: &str, args: Value) -> Req {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": args,
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}});
    Req::Http {
        method: Method::POST,
        path: "/mcp".into(),
        auth,
        body: Some(body),
        extra: vec![
            ("mcp-protocol-version", "2026-07-28".into()),
            ("mcp-method", "tools/call".into()),
            ("accept", "application/json, text/event-stream".into()),
        ],
    }
}

fn vapi(secret: &'static str, message: Value) -> Req {
    Req::Http {
        method: Method::POST,
        path: "/v1/vapi".into(),
        auth: Auth::VapiSecret(secret),
        body: Some(message),
        extra: vec![],
    }
}

fn vapi_tool_call(call_id: &str, tool: &str, args: Value) -> Value {
    json!({"message": {"type": "tool-calls", "call": {"id": call_id, "customer": {"number": ANA}},
        "toolCallList": [{"id": "t1", "type": "function", "function": {"name": tool, "arguments": args}}]}})
}

async fn spawn() -> TestApp {
    let hash = callside::console::auth::hash_password;
    let server = server_file(&format!(
        "[inbound.hubspot]\nclient_secret_env = \"{SECRET_ENV}\"\napp_id = \"{}\"\n\
         [[console.operators]]\nusername = \"ana\"\npassword_argon2 = \"{}\"\ntenants = [\"demo\"]\n\
         [[console.operators]]\nusername = \"bo\"\npassword_argon2 = \"{}\"\ntenants = [\"other\"]\n",
        callside::sandbox::hubspot::SANDBOX_APP_ID,
        hash(ANA_PASSWORD),
        hash(BO_PASSWORD),
    ));
    let mut demo = demo_tenant();
    demo.crm.portal_id = Some(PORTAL);
    spawn_app_with(server, vec![demo, other_tenant()]).await
}

/// Everything B can see of its own data, through its own credentials, plus the CRM's object
/// counts and which live calls are B's.
async fn b_snapshot(app: &TestApp) -> Value {
    let client = reqwest::Client::new();
    let get = |path: String| {
        let c = client.clone();
        async move {
            let r = c.get(format!("http://{}{path}", app.addr)).bearer_auth(DEMO_KEY).send().await.unwrap();
            json!({"status": r.status().as_u16(), "body": r.text().await.unwrap()})
        }
    };
    let mut snap = serde_json::Map::new();
    for day in ["2026-11-22", "2026-11-23"] {
        snap.insert(format!("day {day}"), get(format!("/v1/calls?date={day}")).await);
    }
    for id in [B_DONE, B_WS, B_MCP, B_VAPI] {
        snap.insert(format!("call {id}"), get(format!("/v1/calls/{id}")).await);
        snap.insert(format!("plan {id}"), get(format!("/v1/writeback/calls/{id}")).await);
        let row = app
            .core
            .store
            .call("demo", id)
            .await
            .unwrap()
            .map(|c| json!([c.tenant, c.ended_at.is_some(), c.sync_status]));
        snap.insert(format!("row {id}"), json!(row));
        let live = app.core.sessions.get(id).map(|s| s.tenant.id().to_owned());
        snap.insert(format!("live {id}"), json!(live));
    }
    snap.insert(
        "crm".into(),
        json!([app.hubspot.contacts().len(), app.hubspot.calls().len(), app.hubspot.meetings().len()]),
    );
    snap.insert("review".into(), get("/v1/writeback/review".into()).await);
    snap.insert("conflicts".into(), get("/v1/writeback/conflicts".into()).await);
    Value::Object(snap)
}

async fn ws_status(app: &TestApp, call_id: &str, to: &str, key: &str, via: &Via) -> u16 {
    let mut url = app.ws_url(call_id, "+14155550999", to);
    if let Via::Query = via {
        url.push_str(&format!("&api_key={}", urlencode(key)));
    }
    let mut req = url.into_client_request().unwrap();
    let protocols = match via {
        Via::Subprotocol => format!("mcp, callside-key.{key}"),
        _ => "mcp".into(),
    };
    req.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_str(&protocols).unwrap());
    if let Via::Bearer = via {
        req.headers_mut().insert("Authorization", HeaderValue::from_str(&format!("Bearer {key}")).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected connect error: {e}"),
    }
}

#[tokio::test]
async fn tenant_a_credentials_never_reach_tenant_b_resources_on_any_surface() {
    let app = spawn().await;
    let base = format!("http://{}", app.addr);
    let client = reqwest::Client::new();

    // B's resources: a call written back, and a live call on each transport.
    seed_call(&app, B_DONE, "+12125550111", "2026-11-22T14:05:00Z", "booked").await;
    assert_eq!(app.wait_for_sync(B_DONE).await, "synced");
    let mut b_ws = app.connect(B_WS, ANA).await;
    b_ws.initialize().await;
    assert_eq!(b_ws.tool("get_caller_context", json!({})).await["structuredContent"]["status"], "matched");
    let r = client
        .post(format!("{base}/mcp"))
        .bearer_auth(DEMO_KEY)
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "start_call",
            "arguments": {"call_id": B_MCP, "from": ANA, "to": DEMO_NUMBER},
            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client
        .post(format!("{base}/v1/vapi"))
        .header("x-vapi-secret", DEMO_VAPI)
        .json(&json!({"message": {"type": "status-update", "status": "in-progress", "call": {"id": B_VAPI, "customer": {"number": ANA}}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    for id in [B_WS, B_MCP, B_VAPI] {
        assert_eq!(
            app.core.sessions.get(id).map(|s| s.tenant.id().to_owned()).as_deref(),
            Some("demo"),
            "{id} is live"
        );
    }

    // A's operator logs in (their session and CSRF token are valid, for A's tenant).
    let mut bo = Browser::new(&app);
    let csrf = bo.login("bo", BO_PASSWORD).await;
    let cookie = bo.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ");
    let before = b_snapshot(&app).await;

    let app_secret = std::env::var(SECRET_ENV).unwrap();
    let event = serde_json::to_vec(&json!([{"eventId": 900, "subscriptionId": 1, "portalId": PORTAL, "appId": 1,
        "occurredAt": 1_700_000_000_000i64, "subscriptionType": "contact.propertyChange", "attemptNumber": 0,
        "objectId": 1, "propertyName": "firstname", "propertyValue": "Mallory", "changeSource": "CRM_UI", "sourceId": "x"}]))
    .unwrap();
    let now_ms = app.core.clock.now().as_millisecond();
    let inbound = format!("{base}/v1/inbound/hubspot");
    let hubspot = |sig: String, bearer: bool| {
        let mut extra = vec![("x-hubspot-request-timestamp", now_ms.to_string())];
        if !sig.is_empty() {
            extra.push(("x-hubspot-signature-v3", sig));
        }
        Req::Http {
            method: Method::POST,
            path: "/v1/inbound/hubspot".into(),
            auth: if bearer { Auth::Bearer(OTHER_KEY) } else { Auth::None },
            body: Some(serde_json::from_slice(&event).unwrap()),
            extra,
        }
    };
    let sign = |secret: &str| callside::sandbox::hubspot_webhooks::sign_v3(secret, "POST", &inbound, &event, now_ms);
    // The control: the app's real signature is accepted (so the refusals below are about the
    // credential, not the request's shape).
    let r = client
        .post(&inbound)
        .header("content-type", "application/json")
        .header("x-hubspot-request-timestamp", now_ms.to_string())
        .header("x-hubspot-signature-v3", sign(&app_secret))
        .body(event.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a correctly signed delivery is accepted: {}", r.text().await.unwrap());

    let get = Method::GET;
    let post = Method::POST;
    let rows = vec![
        // WebSocket: A's key on B's number, however presented; A's number with B's call ids.
        row(
            "ws",
            "A's key (Bearer) dialing B's number",
            Req::Ws { call_id: "a-1", to: DEMO_NUMBER, key: OTHER_KEY, via: Via::Bearer },
            Expect::Status(401),
        ),
        row(
            "ws",
            "A's key (query) dialing B's number",
            Req::Ws { call_id: "a-2", to: DEMO_NUMBER, key: OTHER_KEY, via: Via::Query },
            Expect::Status(401),
        ),
        row(
            "ws",
            "A's key (subprotocol) dialing B's number",
            Req::Ws { call_id: "a-3", to: DEMO_NUMBER, key: OTHER_KEY, via: Via::Subprotocol },
            Expect::Status(401),
        ),
        row(
            "ws",
            "A's Vapi secret as a key on B's number",
            Req::Ws { call_id: "a-4", to: DEMO_NUMBER, key: OTHER_VAPI, via: Via::Bearer },
            Expect::Status(401),
        ),
        row(
            "ws",
            "A takes B's live call id",
            Req::Ws { call_id: B_WS, to: OTHER_NUMBER, key: OTHER_KEY, via: Via::Bearer },
            Expect::Status(409),
        ),
        row(
            "ws",
            "A takes B's finished call id",
            Req::Ws { call_id: B_DONE, to: OTHER_NUMBER, key: OTHER_KEY, via: Via::Bearer },
            Expect::Status(409),
        ),
        // MCP over HTTP: A's key naming B's calls or B's number.
        row(
            "mcp",
            "A's key reads B's live MCP call",
            mcp(Auth::Bearer(OTHER_KEY), "get_caller_context", json!({"call_id": B_MCP})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's key reads B's live socket call",
            mcp(Auth::Bearer(OTHER_KEY), "get_caller_context", json!({"call_id": B_WS})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's key ends B's live call",
            mcp(Auth::Bearer(OTHER_KEY), "end_call", json!({"call_id": B_MCP, "summary": "x"})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's key holds a slot on B's call",
            mcp(Auth::Bearer(OTHER_KEY), "find_slots", json!({"call_id": B_VAPI, "service": "consult"})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's key starts a call on B's number",
            mcp(Auth::Bearer(OTHER_KEY), "start_call", json!({"call_id": "a-5", "from": ANA, "to": DEMO_NUMBER})),
            Expect::Refused("wrong_number"),
        ),
        row(
            "mcp",
            "A's key resumes B's live call",
            mcp(Auth::Bearer(OTHER_KEY), "start_call", json!({"call_id": B_MCP})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's key restarts B's finished call",
            mcp(Auth::Bearer(OTHER_KEY), "start_call", json!({"call_id": B_DONE})),
            Expect::Refused("unknown_call"),
        ),
        row(
            "mcp",
            "A's Vapi secret as a Bearer key",
            mcp(Auth::Bearer(OTHER_VAPI), "get_caller_context", json!({"call_id": B_MCP})),
            Expect::Status(401),
        ),
        // Vapi server URL: A's secret naming B's calls.
        row(
            "vapi",
            "A's secret runs a tool on B's live call",
            vapi(OTHER_VAPI, vapi_tool_call(B_VAPI, "get_caller_context", json!({}))),
            Expect::Refused("not available"),
        ),
        row(
            "vapi",
            "A's secret runs a tool on B's socket call",
            vapi(OTHER_VAPI, vapi_tool_call(B_WS, "find_slots", json!({"service": "consult"}))),
            Expect::Refused("not available"),
        ),
        row(
            "vapi",
            "A's secret reports the end of B's call",
            vapi(
                OTHER_VAPI,
                json!({"message": {"type": "end-of-call-report", "call": {"id": B_VAPI}, "analysis": {"summary": "hijack"}}}),
            ),
            Expect::Status(404),
        ),
        row(
            "vapi",
            "A's secret reports on B's finished call",
            vapi(
                OTHER_VAPI,
                json!({"message": {"type": "end-of-call-report", "call": {"id": B_DONE}, "analysis": {"summary": "hijack"}}}),
            ),
            Expect::Status(404),
        ),
        row(
            "vapi",
            "A's secret ends B's live call",
            vapi(OTHER_VAPI, json!({"message": {"type": "status-update", "status": "ended", "call": {"id": B_VAPI}}})),
            Expect::Status(200),
        ),
        row(
            "vapi",
            "A's API key as the Vapi secret",
            vapi(OTHER_KEY, vapi_tool_call(B_VAPI, "get_caller_context", json!({}))),
            Expect::Status(401),
        ),
        // REST with A's key.
        row(
            "rest",
            "GET B's call",
            http(get.clone(), format!("/v1/calls/{B_DONE}"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "GET B's live call",
            http(get.clone(), format!("/v1/calls/{B_WS}"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "GET B's day",
            http(get.clone(), "/v1/calls?tenant=demo&date=2026-11-22", Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "resync B's call",
            http(post.clone(), format!("/v1/calls/{B_DONE}/resync"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "replay B's call",
            http(post.clone(), format!("/v1/calls/{B_DONE}/replay"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "undo B's call",
            http(post.clone(), format!("/v1/calls/{B_DONE}/undo"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "approve B's call",
            http(post.clone(), format!("/v1/calls/{B_DONE}/approve"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "GET B's write-back plan",
            http(get.clone(), format!("/v1/writeback/calls/{B_DONE}"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "undo B's write-back",
            http(post.clone(), format!("/v1/writeback/calls/{B_DONE}/undo"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "approve B's plan",
            http(post.clone(), format!("/v1/writeback/calls/{B_DONE}/approve"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "reject B's plan",
            http(post.clone(), format!("/v1/writeback/calls/{B_DONE}/reject"), Auth::Bearer(OTHER_KEY)),
            Expect::Status(404),
        ),
        row(
            "rest",
            "A's review list has none of B's",
            http(get.clone(), "/v1/writeback/review", Auth::Bearer(OTHER_KEY)),
            Expect::Status(200),
        ),
        row(
            "rest",
            "A's conflict list has none of B's",
            http(get.clone(), "/v1/writeback/conflicts", Auth::Bearer(OTHER_KEY)),
            Expect::Status(200),
        ),
        row(
            "rest",
            "A's Vapi secret as a REST key",
            http(get.clone(), format!("/v1/calls/{B_DONE}"), Auth::Bearer(OTHER_VAPI)),
            Expect::Status(401),
        ),
        // Console: A's operator, logged in, with a valid CSRF token.
        row("console", "B's day page", http(get.clone(), "/console/t/demo/calls", Auth::Operator), Expect::Status(404)),
        row(
            "console",
            "B's call page",
            http(get.clone(), format!("/console/t/demo/calls/{B_DONE}"), Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "B's call under A's tenant",
            http(get.clone(), format!("/console/t/other/calls/{B_DONE}"), Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "resync B's call",
            http(post.clone(), format!("/console/t/demo/calls/{B_DONE}/resync"), Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "undo B's call under A's tenant",
            http(post.clone(), format!("/console/t/other/calls/{B_DONE}/undo"), Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "re-authorize B's CRM",
            http(post.clone(), "/console/t/demo/connect/hubspot", Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "API: B's call",
            http(get.clone(), format!("/v1/calls/{B_DONE}"), Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "API: B's day",
            http(get.clone(), "/v1/calls?tenant=demo&date=2026-11-22", Auth::Operator),
            Expect::Status(404),
        ),
        row(
            "console",
            "API: replay B's call",
            http(post.clone(), format!("/v1/calls/{B_DONE}/replay"), Auth::Operator),
            Expect::Status(404),
        ),
        // Inbound webhook: a tenant's credential is not the vendor app's signing secret.
        row("webhook", "A's key as Bearer, unsigned", hubspot(String::new(), true), Expect::Status(401)),
        row("webhook", "signed with A's API key", hubspot(sign(OTHER_KEY), false), Expect::Status(401)),
        row("webhook", "signed with A's Vapi secret", hubspot(sign(OTHER_VAPI), true), Expect::Status(401)),
    ];

    let mut failures = vec![];
    let surfaces: std::collections::BTreeSet<&str> = rows.iter().map(|r| r.surface).collect();
    for Row { surface, what, req, expect } in rows {
        let (status, body) = match req {
            Req::Ws { call_id, to, key, via } => (ws_status(&app, call_id, to, key, &via).await, String::new()),
            Req::Http { method, path, auth, body, extra } => {
                let mut r = client.request(method.clone(), format!("{base}{path}"));
                match auth {
                    Auth::None => {}
                    Auth::Bearer(k) => r = r.bearer_auth(k),
                    Auth::VapiSecret(s) => r = r.header("x-vapi-secret", s),
                    Auth::Operator => {
                        r = r.header("cookie", &cookie).header("x-csrf-token", &csrf);
                        if method == Method::POST && body.is_none() {
                            r = r.form(&[("csrf", csrf.as_str())]);
                        }
                    }
                }
                for (k, v) in extra {
                    r = r.header(k, v);
                }
                if let Some(b) = body {
                    r = r.header("content-type", "application/json").body(b.to_string());
                }
                let resp = r.send().await.unwrap();
                (resp.status().as_u16(), resp.text().await.unwrap())
            }
        };
        let refused = match expect {
            Expect::Status(s) => status == s,
            Expect::Refused(marker) => status == 200 && body.contains(marker),
        };
        if !refused {
            failures.push(format!("[{surface}] {what}: got {status} {body}"));
        }
        if let Some(s) = B_SECRETS.iter().find(|s| body.contains(*s)) {
            failures.push(format!("[{surface}] {what}: the answer carries B's data ({s}): {body}"));
        }
    }
    assert!(failures.is_empty(), "cross-tenant attempts not refused:\n{}", failures.join("\n"));
    assert_eq!(
        surfaces.into_iter().collect::<Vec<_>>(),
        ["console", "mcp", "rest", "vapi", "webhook", "ws"],
        "every surface is in the matrix"
    );

    // B's data is exactly as it was, and B's live socket still answers.
    assert_eq!(b_snapshot(&app).await, before, "B's data changed");
    let ctx = b_ws.tool("get_caller_context", json!({})).await;
    assert_eq!(ctx["structuredContent"]["status"], "matched", "{ctx}");
    // And A's own credentials still work on A's own resources (the refusals were about B).
    assert_eq!(ws_status(&app, "a-own", OTHER_NUMBER, OTHER_KEY, &Via::Bearer).await, 101);
    app.shutdown().await;
}

#[test]
fn a_key_or_vapi_secret_shared_by_two_tenants_is_a_config_error() {
    use std::path::{Path, PathBuf};
    let mut shared_key = other_tenant();
    shared_key.api_key_sha256.push(hex::encode(callside::config::api_key_digest(DEMO_KEY)));
    let mut shared_vapi = other_tenant();
    shared_vapi.vapi_secret_sha256 = demo_tenant().vapi_secret_sha256;
    for (other, key) in [(shared_key, "api_key_sha256[1]"), (shared_vapi, "vapi_secret_sha256")] {
        let err = match callside::config::Config::from_parts(
            Path::new("callside.toml"),
            server_file(""),
            vec![(PathBuf::from("demo.toml"), demo_tenant()), (PathBuf::from("other.toml"), other)],
            &callside::config::Overrides::default(),
            PathBuf::from("data"),
        ) {
            Ok(_) => panic!("{key}: a credential shared by two tenants was accepted"),
            Err(e) => e,
        };
        assert!(
            err.issues.iter().any(|i| i.key == key && i.reason.contains("another tenant")),
            "{key}: {:?}",
            err.issues.iter().map(|i| (&i.key, &i.reason)).collect::<Vec<_>>()
        );
    }
}
