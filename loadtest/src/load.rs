//! The open-loop generator: calls arrive on a schedule fixed in advance (a constant rate or a
//! burst), whatever the service answers; each call runs a scripted flow whose steps are also
//! scheduled (`think` apart), and every latency is measured from the step's *scheduled* send time,
//! so a slow answer that delays later sends shows up in their latency instead of being omitted.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{WebSocketStream, client_async};

use crate::setup::{TenantSpec, new_phone};

/// The scripted flows. Every flow uses only tools that exist (`tools/list`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Flow {
    /// A known caller: context, services, a slot question, end_call.
    KnownContext,
    /// A new caller finds, holds and books a slot, then end_call with name and email.
    NewBooks,
    /// A known caller's email given from a new number (must not create a second contact).
    KnownByEmail,
    /// A known caller books, then moves the appointment in the same call.
    Reschedule,
    /// A known caller books, then cancels in the same call.
    Cancel,
    /// Holds a slot and hangs up without end_call (the hold must be released).
    HangUp,
    /// A known caller asks for context `warm_steps` times (one-connection latency).
    Warm,
}

impl Flow {
    pub const ALL: [Flow; 7] = [
        Flow::KnownContext,
        Flow::NewBooks,
        Flow::KnownByEmail,
        Flow::Reschedule,
        Flow::Cancel,
        Flow::HangUp,
        Flow::Warm,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Flow::KnownContext => "known_context",
            Flow::NewBooks => "new_books",
            Flow::KnownByEmail => "known_by_email",
            Flow::Reschedule => "reschedule",
            Flow::Cancel => "cancel",
            Flow::HangUp => "hang_up",
            Flow::Warm => "warm",
        }
    }
}

/// `name=weight,...`, e.g. `known_context=30,new_books=25`.
pub fn parse_mix(s: &str) -> anyhow::Result<Vec<(Flow, u32)>> {
    let mut mix = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, w) = part.split_once('=').ok_or_else(|| anyhow!("mix entry {part:?} is not name=weight"))?;
        let flow = Flow::ALL
            .into_iter()
            .find(|f| f.name() == name.trim())
            .ok_or_else(|| anyhow!("unknown flow {name:?}; flows: {:?}", Flow::ALL.map(Flow::name)))?;
        let w: u32 = w.trim().parse().with_context(|| format!("weight of {name}"))?;
        mix.push((flow, w));
    }
    if mix.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        bail!("the mix has no positive weight");
    }
    Ok(mix)
}

/// SplitMix64: a tiny deterministic generator (the run is reproducible from its seed).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// When calls arrive.
#[derive(Debug, Clone, Copy)]
pub enum Arrivals {
    /// `rate` calls per second, `count` calls.
    Constant { rate: f64, count: u64 },
    /// `count` calls spread evenly over `window`.
    Burst { count: u64, window: Duration },
}

impl Arrivals {
    pub fn count(&self) -> u64 {
        match *self {
            Arrivals::Constant { count, .. } | Arrivals::Burst { count, .. } => count,
        }
    }
    /// Offset of call `i` from the start.
    pub fn offset(&self, i: u64) -> Duration {
        match *self {
            Arrivals::Constant { rate, .. } => Duration::from_secs_f64(i as f64 / rate),
            Arrivals::Burst { count, window } => window.mul_f64(i as f64 / count.max(1) as f64),
        }
    }
}

/// Everything a run's calls share.
pub struct Plan {
    pub arrivals: Arrivals,
    /// Idle time between the handshake and the first tool call (to hold many calls open).
    pub hold_open: Duration,
    /// Scheduled time between two steps of a call; zero: each step is sent when the previous
    /// answer arrives (closed loop within the call).
    pub think: Duration,
    pub warm_steps: u32,
    pub mix: Vec<(Flow, u32)>,
    pub tenants: Vec<TenantSpec>,
    pub seed: u64,
    pub step_timeout: Duration,
    /// Loopback source addresses to spread client sockets over (more ephemeral ports).
    pub source_ips: u8,
}

/// One step as sent, for the floor's replay: the tool and the bytes each way.
#[derive(Debug, Clone, Copy)]
pub struct StepSize {
    pub tool: &'static str,
    pub request: u32,
    pub response: u32,
}

/// Live counters (read by the progress printer and the sampler).
#[derive(Default)]
pub struct Counters {
    pub started: AtomicU64,
    pub open: AtomicU64,
    pub peak_open: AtomicU64,
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    pub requests: AtomicU64,
    pub connect_failures: AtomicU64,
}

/// What one phase (service or floor) measured.
#[derive(Default)]
pub struct Outcome {
    pub latency: HashMap<&'static str, Histogram<u64>>,
    /// Tool results with `isError: true` (e.g. a slot taken), by tool.
    pub tool_errors: HashMap<&'static str, u64>,
    /// Transport failures (connect refused, timeout, socket closed), by kind.
    pub failures: HashMap<String, u64>,
    /// Calls whose `end_call` was acknowledged (`saved: true`).
    pub acked_calls: Vec<String>,
    /// Per call (by index) its steps, for the floor's replay.
    pub traces: Vec<Option<Vec<StepSize>>>,
    pub flows: HashMap<&'static str, u64>,
    /// Bookings confirmed (`book_slot` answered `booked: true`).
    pub bookings: u64,
}

impl Outcome {
    pub fn record(&mut self, tool: &'static str, micros: u64) {
        self.latency
            .entry(tool)
            .or_insert_with(|| Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds"))
            .saturating_record(micros.max(1));
    }

    fn merge_call(&mut self, c: CallResult) {
        for (tool, us) in c.samples {
            self.record(tool, us);
        }
        for t in c.tool_errors {
            *self.tool_errors.entry(t).or_default() += 1;
        }
        if let Some(f) = c.failure {
            *self.failures.entry(f).or_default() += 1;
        }
        if c.acked {
            self.acked_calls.push(c.call_id);
        }
        self.bookings += c.bookings;
        *self.flows.entry(c.flow_name).or_default() += 1;
        if let Some(slot) = self.traces.get_mut(c.index as usize) {
            *slot = Some(c.trace);
        }
    }
}

struct CallResult {
    index: u64,
    call_id: String,
    flow_name: &'static str,
    samples: Vec<(&'static str, u64)>,
    trace: Vec<StepSize>,
    tool_errors: Vec<&'static str>,
    failure: Option<String>,
    acked: bool,
    bookings: u64,
}

/// Which server the calls talk to.
#[derive(Clone)]
pub enum Target {
    /// callside at `ws://host:port`.
    Service { ws_url: String },
    /// The echo server: each step replays the service phase's sizes.
    Echo { addr: SocketAddr, traces: Arc<Vec<Option<Vec<StepSize>>>> },
}

type Ws = WebSocketStream<tokio::net::TcpStream>;

/// Runs every call of the plan against `target`; returns when all have finished.
pub async fn run(plan: Arc<Plan>, target: Target, counters: Arc<Counters>) -> Outcome {
    let total = plan.arrivals.count();
    let outcome = Arc::new(Mutex::new(Outcome { traces: vec![None; total as usize], ..Outcome::default() }));
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis()
    );
    let start = Instant::now() + Duration::from_millis(50);
    let mut rng = Rng::new(plan.seed);
    let weight_sum: u32 = plan.mix.iter().map(|(_, w)| w).sum();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + plan.arrivals.offset(i);
        // Open loop: the next arrival waits for its time, never for an answer.
        tokio::time::sleep_until(scheduled).await;
        let mut pick = rng.below(weight_sum as u64) as u32;
        let flow = plan
            .mix
            .iter()
            .find(|(_, w)| {
                if pick < *w {
                    true
                } else {
                    pick -= w;
                    false
                }
            })
            .map(|(f, _)| *f)
            .expect("weights sum to weight_sum");
        let tenant_ix = rng.below(plan.tenants.len() as u64) as usize;
        let call_seed = rng.next_u64();
        let plan = plan.clone();
        let target = target.clone();
        let counters = counters.clone();
        let outcome = outcome.clone();
        let call_id = format!("lt-{run_id}-{i}");
        tasks.spawn(async move {
            counters.started.fetch_add(1, Ordering::Relaxed);
            let r = one_call(&plan, &target, &counters, i, call_id, flow, tenant_ix, call_seed, scheduled).await;
            if r.failure.is_some() {
                counters.failed.fetch_add(1, Ordering::Relaxed);
            }
            counters.finished.fetch_add(1, Ordering::Relaxed);
            outcome.lock().expect("outcome lock").merge_call(r);
        });
        // Reap finished tasks as we go, so the set stays as small as the open calls.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    Arc::try_unwrap(outcome).map(|m| m.into_inner().expect("outcome lock")).unwrap_or_else(|a| {
        let mut g = a.lock().expect("outcome lock");
        std::mem::take(&mut *g)
    })
}

#[allow(clippy::too_many_arguments)]
async fn one_call(
    plan: &Plan,
    target: &Target,
    counters: &Counters,
    index: u64,
    call_id: String,
    flow: Flow,
    tenant_ix: usize,
    seed: u64,
    scheduled: Instant,
) -> CallResult {
    let mut call = Call {
        plan,
        counters,
        index,
        call_id: call_id.clone(),
        tenant: &plan.tenants[tenant_ix],
        tenant_ix,
        rng: Rng::new(seed),
        ws: None,
        next_id: 1,
        base: scheduled + plan.hold_open,
        step: 0,
        samples: Vec::new(),
        trace: Vec::new(),
        tool_errors: Vec::new(),
        replay: None,
        bookings: 0,
    };
    let mut acked = false;
    let result = async {
        match target {
            Target::Service { ws_url } => {
                call.connect_service(ws_url, flow, scheduled, counters).await?;
                acked = call.run_flow(flow).await?;
            }
            Target::Echo { addr, traces } => {
                let Some(Some(trace)) = traces.get(index as usize) else {
                    return Ok(());
                };
                call.replay = Some(trace.clone());
                call.connect_echo(*addr, scheduled, counters).await?;
                call.replay_trace().await?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    let failure = result.err().map(|e| {
        let s = format!("{e:#}");
        // Group by kind, not by call.
        s.split(':').next().unwrap_or("error").trim().to_owned()
    });
    if let Some(mut ws) = call.ws.take() {
        if flow != Flow::HangUp || matches!(target, Target::Echo { .. }) {
            let _ = ws.close(None).await;
        }
        drop(ws);
        counters.open.fetch_sub(1, Ordering::Relaxed);
    }
    CallResult {
        index,
        call_id,
        flow_name: if matches!(target, Target::Echo { .. }) { "replay" } else { flow.name() },
        samples: call.samples,
        trace: call.trace,
        tool_errors: call.tool_errors,
        failure,
        acked,
        bookings: call.bookings,
    }
}

struct Call<'a> {
    plan: &'a Plan,
    counters: &'a Counters,
    index: u64,
    call_id: String,
    tenant: &'a TenantSpec,
    tenant_ix: usize,
    rng: Rng,
    ws: Option<Ws>,
    next_id: u64,
    /// When step 0 is scheduled.
    base: Instant,
    step: u32,
    samples: Vec<(&'static str, u64)>,
    trace: Vec<StepSize>,
    tool_errors: Vec<&'static str>,
    replay: Option<Vec<StepSize>>,
    bookings: u64,
}

fn enc(s: &str) -> String {
    s.replace('+', "%2B")
}

impl Call<'_> {
    async fn tcp(&self, addr: SocketAddr) -> anyhow::Result<tokio::net::TcpStream> {
        let socket = TcpSocket::new_v4()?;
        if self.plan.source_ips > 1 {
            let last = 1 + (self.index % self.plan.source_ips as u64) as u8;
            socket.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)), 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn caller_number(&mut self, flow: Flow) -> String {
        match flow {
            Flow::NewBooks | Flow::KnownByEmail | Flow::HangUp => new_phone(self.index),
            _ => {
                let k = self.rng.below(self.tenant.known.len().max(1) as u64) as usize;
                self.tenant.known.get(k).map(|c| c.0.clone()).unwrap_or_else(|| new_phone(self.index))
            }
        }
    }

    async fn connect_service(
        &mut self,
        ws_url: &str,
        flow: Flow,
        scheduled: Instant,
        counters: &Counters,
    ) -> anyhow::Result<()> {
        let from = self.caller_number(flow);
        let url = format!(
            "{ws_url}/v1/calls/ws?call_id={}&from={}&to={}",
            self.call_id,
            enc(&from),
            enc(&self.tenant.number)
        );
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut().insert("Sec-WebSocket-Protocol", "mcp".parse()?);
        req.headers_mut().insert("Authorization", format!("Bearer {}", self.tenant.key).parse()?);
        let host = ws_url.trim_start_matches("ws://");
        let addr: SocketAddr = tokio::net::lookup_host(host).await?.next().context("connect: no address")?;
        let ws = self.handshake(addr, req, scheduled, counters).await?;
        self.ws = Some(ws);
        let init = json!({"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "loadtest", "version": "0"}});
        self.rpc_at("initialize", "initialize", init, Instant::now()).await?;
        self.send_notification(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).await?;
        Ok(())
    }

    async fn connect_echo(&mut self, addr: SocketAddr, scheduled: Instant, counters: &Counters) -> anyhow::Result<()> {
        let req = format!("ws://{addr}/").into_client_request()?;
        let ws = self.handshake(addr, req, scheduled, counters).await?;
        self.ws = Some(ws);
        Ok(())
    }

    async fn handshake(
        &mut self,
        addr: SocketAddr,
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
        scheduled: Instant,
        counters: &Counters,
    ) -> anyhow::Result<Ws> {
        let timeout = self.plan.step_timeout;
        let connected = tokio::time::timeout(timeout, async {
            let stream = self.tcp(addr).await.context("connect")?;
            let (ws, _) = client_async(req, stream).await.context("handshake")?;
            anyhow::Ok(ws)
        })
        .await;
        let ws = match connected {
            Ok(Ok(ws)) => ws,
            Ok(Err(e)) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => {
                counters.connect_failures.fetch_add(1, Ordering::Relaxed);
                bail!("connect timeout");
            }
        };
        self.samples.push(("connect", scheduled.elapsed().as_micros() as u64));
        let open = counters.open.fetch_add(1, Ordering::Relaxed) + 1;
        counters.peak_open.fetch_max(open, Ordering::Relaxed);
        Ok(ws)
    }

    async fn send_notification(&mut self, v: Value) -> anyhow::Result<()> {
        let ws = self.ws.as_mut().context("socket")?;
        ws.send(Message::Text(v.to_string().into())).await.context("send")?;
        Ok(())
    }

    /// The next step's scheduled time (see the module docs).
    fn next_scheduled(&mut self) -> Instant {
        let at = if self.plan.think.is_zero() {
            Instant::now().max(self.base)
        } else {
            self.base + self.plan.think * self.step
        };
        self.step += 1;
        at
    }

    async fn rpc_at(
        &mut self,
        tool: &'static str,
        method: &str,
        params: Value,
        scheduled: Instant,
    ) -> anyhow::Result<Value> {
        tokio::time::sleep_until(scheduled).await;
        let id = self.next_id;
        self.next_id += 1;
        let text = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
        let request = text.len() as u32;
        let timeout = self.plan.step_timeout;
        let ws = self.ws.as_mut().context("socket")?;
        let answer = tokio::time::timeout(timeout, async {
            ws.send(Message::Text(text.into())).await.context("send")?;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).context("bad json")?;
                        if v.get("id") == Some(&json!(id)) {
                            return anyhow::Ok((v, t.len() as u32));
                        }
                    }
                    Some(Ok(Message::Close(f))) => bail!("closed by server during {tool}: {f:?}"),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => bail!("socket error during {tool}: {e}"),
                    None => bail!("socket ended during {tool}"),
                }
            }
        })
        .await
        .map_err(|_| anyhow!("timeout: {tool}"))??;
        self.samples.push((tool, scheduled.elapsed().as_micros() as u64));
        self.counters.requests.fetch_add(1, Ordering::Relaxed);
        let (v, response) = answer;
        self.trace.push(StepSize { tool, request, response });
        if let Some(e) = v.get("error") {
            bail!("json-rpc error: {tool}: {e}");
        }
        Ok(v)
    }

    /// Calls a tool; returns (ok, structuredContent).
    async fn tool(&mut self, tool: &'static str, args: Value) -> anyhow::Result<(bool, Value)> {
        let at = self.next_scheduled();
        let v = self.rpc_at(tool, "tools/call", json!({"name": tool, "arguments": args}), at).await?;
        let result = &v["result"];
        let ok = result["isError"] != json!(true);
        if !ok {
            self.tool_errors.push(tool);
        }
        Ok((ok, result["structuredContent"].clone()))
    }

    fn service(&mut self) -> &'static str {
        ["consult", "haircut", "color"][self.rng.below(3) as usize]
    }

    /// find_slots → hold_slot (a random offered time; on "taken", an offered alternative, up to
    /// three tries). Returns (service, hold_id).
    async fn find_and_hold(&mut self) -> anyhow::Result<Option<(&'static str, String)>> {
        let service = self.service();
        let (ok, found) = self.tool("find_slots", json!({"service": service})).await?;
        if !ok {
            return Ok(None);
        }
        let mut options: Vec<Value> = found["slots"].as_array().cloned().unwrap_or_default();
        for _ in 0..3 {
            if options.is_empty() {
                return Ok(None);
            }
            let pick = options[self.rng.below(options.len() as u64) as usize].clone();
            let (ok, held) = self
                .tool("hold_slot", json!({"service": service, "start": pick["start"], "staff_id": pick["staff_id"]}))
                .await?;
            if ok {
                return Ok(held["hold_id"].as_str().map(|h| (service, h.to_owned())));
            }
            options = held["alternatives"].as_array().cloned().unwrap_or_default();
        }
        Ok(None)
    }

    /// A booking for this caller; returns the event id.
    async fn book(&mut self, name: &str, email: &str) -> anyhow::Result<Option<String>> {
        let Some((_, hold)) = self.find_and_hold().await? else {
            return Ok(None);
        };
        let (ok, booked) = self.tool("book_slot", json!({"hold_id": hold, "name": name, "email": email})).await?;
        if ok && booked["booked"] == json!(true) {
            self.bookings += 1;
            return Ok(booked["event_id"].as_str().map(str::to_owned));
        }
        Ok(None)
    }

    async fn end_call(&mut self, args: Value) -> anyhow::Result<bool> {
        let (ok, saved) = self.tool("end_call", args).await?;
        Ok(ok && saved["saved"] == json!(true))
    }

    /// Runs the flow; returns whether `end_call` was acknowledged.
    async fn run_flow(&mut self, flow: Flow) -> anyhow::Result<bool> {
        let known = {
            let k = self.rng.below(self.tenant.known.len().max(1) as u64) as usize;
            self.tenant.known.get(k).cloned()
        };
        match flow {
            Flow::KnownContext => {
                self.tool("get_caller_context", json!({})).await?;
                self.tool("list_services", json!({})).await?;
                let service = self.service();
                self.tool("find_slots", json!({"service": service})).await?;
                self.end_call(json!({"summary": "Asked about services.", "disposition": "info_only"})).await
            }
            Flow::NewBooks => {
                self.tool("get_caller_context", json!({})).await?;
                let name = format!("New Caller {}", self.index);
                let email = format!("new{}.t{}@loadtest.example", self.index, self.tenant_ix);
                let booked = self.book(&name, &email).await?;
                let disposition = if booked.is_some() { "booked" } else { "info_only" };
                self.end_call(json!({"summary": "New caller booking.", "disposition": disposition,
                                     "caller_name": name, "caller_email": email}))
                    .await
            }
            Flow::KnownByEmail => {
                self.tool("get_caller_context", json!({})).await?;
                let (_, email, first) = known.context("no known callers")?;
                self.end_call(json!({"summary": "Known caller from a new number.", "disposition": "info_only",
                                     "caller_name": format!("{first} Caller"), "caller_email": email}))
                    .await
            }
            Flow::Reschedule | Flow::Cancel => {
                self.tool("get_caller_context", json!({})).await?;
                let name = format!("Known Caller {}", self.index);
                let booked = self.book(&name, &format!("k{}@loadtest.example", self.index)).await?;
                let (_, list) = self.tool("find_appointments", json!({})).await?;
                let appointment = list["appointments"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| Some(x["appointment_id"].as_str()) == Some(booked.as_deref())))
                    .and_then(|x| x["appointment_id"].as_str())
                    .map(str::to_owned);
                if let Some(id) = appointment {
                    if flow == Flow::Reschedule {
                        let service = list["appointments"][0]["service_id"].as_str().unwrap_or("consult").to_owned();
                        let (ok, found) = self.tool("find_slots", json!({"service": service})).await?;
                        let slots = found["slots"].as_array().cloned().unwrap_or_default();
                        if ok && !slots.is_empty() {
                            let pick = slots[self.rng.below(slots.len() as u64) as usize].clone();
                            self.tool("reschedule_appointment", json!({"appointment_id": id, "start": pick["start"]}))
                                .await?;
                        }
                    } else {
                        self.tool("cancel_appointment", json!({"appointment_id": id, "reason": "load test"})).await?;
                    }
                }
                self.end_call(json!({"summary": "Changed an appointment.", "disposition": "booked"})).await
            }
            Flow::HangUp => {
                self.tool("get_caller_context", json!({})).await?;
                self.find_and_hold().await?;
                // The caller hangs up: the socket is dropped without end_call or a close frame.
                Ok(false)
            }
            Flow::Warm => {
                for _ in 0..self.plan.warm_steps {
                    self.tool("get_caller_context", json!({})).await?;
                }
                self.end_call(json!({"summary": "Warm loop.", "disposition": "info_only"})).await
            }
        }
    }

    /// The floor: the same steps at the same times, each an echo of a message the size of the
    /// larger of the service's request and answer for that step.
    async fn replay_trace(&mut self) -> anyhow::Result<()> {
        let trace = self.replay.take().unwrap_or_default();
        for step in trace {
            let at = self.next_scheduled();
            tokio::time::sleep_until(at).await;
            let size = step.request.max(step.response) as usize;
            let id = self.next_id;
            self.next_id += 1;
            let mut text = format!("{{\"id\":{id},\"pad\":\"");
            let pad = size.saturating_sub(text.len() + 2);
            text.extend(std::iter::repeat_n('x', pad));
            text.push_str("\"}");
            let timeout = self.plan.step_timeout;
            let ws = self.ws.as_mut().context("socket")?;
            tokio::time::timeout(timeout, async {
                ws.send(Message::Text(text.into())).await.context("send")?;
                loop {
                    match ws.next().await {
                        Some(Ok(Message::Text(_))) => return anyhow::Ok(()),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => bail!("socket error: {e}"),
                        None => bail!("socket ended"),
                    }
                }
            })
            .await
            .map_err(|_| anyhow!("timeout: echo"))??;
            self.samples.push((step.tool, at.elapsed().as_micros() as u64));
            self.counters.requests.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// The echo floor's server: a bare tokio-tungstenite server that answers every text message with
/// itself. Run as its own process (`loadtest echo-server`) so it does not share the generator's
/// runtime. Prints `LISTENING <addr>` once bound.
pub async fn echo_server(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("LISTENING {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            while let Some(Ok(msg)) = ws.next().await {
                let echo = matches!(msg, Message::Text(_) | Message::Binary(_));
                if matches!(msg, Message::Close(_)) || (echo && ws.send(msg).await.is_err()) {
                    break;
                }
            }
        });
    }
}
