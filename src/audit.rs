//! `callside audit --tenant NAME` (issue 9, item 8): seed 000's monthly checklist as a command.
//!
//! Seed 000: "Verify webhook delivery logs for all three platforms; Check CRM for duplicate records
//! that indicate sync conflicts; Review calendar for double-bookings from sync errors; Test POS
//! data freshness against actual inventory counts." Four sections, each with a verdict (ok /
//! attention / problem), the reasons for it and its evidence:
//!
//! 1. **Sync and delivery log**: the window's calls by sync status (the console's derivation,
//!    `console::view::SyncStatus`), steps by kind and outcome, retries, dead letters and parked
//!    steps, hangup → synced latency (p50/p95, from the store's times) against seed 000's 5 s
//!    target, the error rate (failed attempts / attempts, as `alerts` counts them) against its 1 %
//!    target, outbound webhooks (signed write-back webhook steps, cancellation notices) and the
//!    inbound deliveries the store kept per vendor.
//! 2. **Duplicate contacts in the CRM**: every distinct caller phone and email of the window
//!    searched through the tenant's `CrmConnector` (bounded: [`MAX_IDENTITIES`]; the connectors
//!    space searches to the vendor's rate, and the scan runs in the write-back lane so it never
//!    takes the live reserve), each value held by more than one record listed with the record ids
//!    and deep links; plus the service's own ambiguous matches (`console::reconcile`).
//! 3. **Calendar overlaps**: each staff member's busy events from the window's start to the end of
//!    the booking horizon, overlapping pairs listed, those involving an event callside created
//!    (its call id in the event's private properties) marked.
//! 4. **POS freshness**: the newest order of the most recent callers the POS knows, against now,
//!    and whether the POS answered. Inventory counts are not read by callside: the report says so.
//!
//! Gathering ([`run`]) is separate from the verdicts and the Markdown ([`AuditReport::markdown`]),
//! which are pure.

use std::collections::{BTreeMap, HashMap, HashSet};

use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

use crate::connectors::calendar::{CalendarEvent, Interval};
use crate::connectors::pos::PosMatch;
use crate::connectors::rate::RateBudgets;
use crate::console::reconcile::{self, Entry};
use crate::console::view::{self, SyncStatus, crm_record_url};
use crate::identity::{ParsedPhone, Phone, normalize_email, same_number};
use crate::observe::{redact_email, redact_phone};
use crate::store::{DeadLetter, InboundCount, StepOutcome, Store, StoreError};
use crate::tenant::Tenant;
use crate::writeback::plan::kind;

/// The window when `--days` is not given.
pub const DEFAULT_DAYS: u32 = 30;
/// The longest window accepted.
pub const MAX_DAYS: u32 = 366;
/// Seed 000: "Error rate: Failed syncs divided by total sync attempts (target: under 1%)".
pub const ERROR_RATE_TARGET: f64 = 0.01;
/// Seed 000: "Data sync latency: Time from AI event to CRM record creation (target: under 5
/// seconds)".
pub const LATENCY_TARGET: SignedDuration = SignedDuration::from_secs(5);
/// The most distinct caller phones and emails searched in the CRM (newest callers first): each
/// is one connector lookup, a handful of vendor requests at most.
pub const MAX_IDENTITIES: usize = 100;
/// The most recent callers tried at the POS until one is found there.
pub const MAX_POS_LOOKUPS: usize = 5;
/// The most entries of the dead-letter and parked lists.
const LIST_LIMIT: i64 = 200;

/// A section's verdict, ordered from best to worst.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Ok,
    Attention,
    Problem,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Attention => "attention",
            Verdict::Problem => "problem",
        }
    }
}

/// A verdict and the sentences that justify it (empty for a plain ok).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assessment {
    pub verdict: Verdict,
    pub reasons: Vec<String>,
}

impl Assessment {
    fn new() -> Self {
        Self { verdict: Verdict::Ok, reasons: Vec::new() }
    }

    fn raise(&mut self, verdict: Verdict, reason: String) {
        self.verdict = self.verdict.max(verdict);
        self.reasons.push(reason);
    }
}

/// The audited period `[from, to)`: from midnight `days` days ago in the tenant's zone to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub from: Timestamp,
    pub to: Timestamp,
    pub days: u32,
}

impl Window {
    pub fn ending_at(now: Timestamp, tz: &jiff::tz::TimeZone, days: u32) -> Window {
        let today = now.to_zoned_datetime(tz.clone()).date();
        let first = today.checked_sub(jiff::Span::new().days(i64::from(days))).unwrap_or(today);
        let from = first.to_zoned_datetime(tz.clone()).map(|z| z.timestamp()).unwrap_or(now);
        Window { from, to: now, days }
    }
}

/// Steps of one kind in the window, by outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepTally {
    pub done: usize,
    pub pending: usize,
    pub dead: usize,
    pub parked: usize,
    /// Attempts beyond each step's first.
    pub retries: i64,
}

impl StepTally {
    fn add(&mut self, s: &StepOutcome) {
        match s.status.as_str() {
            "done" => self.done += 1,
            "dead" => self.dead += 1,
            "parked" => self.parked += 1,
            _ => self.pending += 1,
        }
        self.retries += (s.attempts - 1).max(0);
    }
}

/// Hangup → synced latency over the window's synced calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    pub samples: usize,
    pub p50: SignedDuration,
    pub p95: SignedDuration,
    pub max: SignedDuration,
}

impl Latency {
    /// Nearest-rank percentiles; `None` without samples.
    pub fn of(mut samples: Vec<SignedDuration>) -> Option<Latency> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).clamp(1, samples.len()) - 1];
        Some(Latency { samples: samples.len(), p50: rank(50), p95: rank(95), max: samples[samples.len() - 1] })
    }
}

/// Section 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncLog {
    pub calls: usize,
    /// Calls per sync status label, in the console's order of statuses.
    pub by_status: Vec<(&'static str, usize)>,
    /// Steps per kind.
    pub steps: BTreeMap<String, StepTally>,
    /// CRM attempts in the window and the failed ones (retried or dead-lettered), from the
    /// audit trail.
    pub attempts: i64,
    pub failed_attempts: i64,
    pub latency: Option<Latency>,
    /// Every dead-lettered step of the tenant (whatever its age: it waits for an operator).
    pub dead_letters: Vec<DeadLetter>,
    pub parked: Vec<DeadLetter>,
    /// Calls waiting for an operator's approval (review mode).
    pub awaiting_review: usize,
    /// Cancellation notices to the tenant's webhook: (delivered, failed).
    pub notices: (usize, usize),
    pub inbound: Vec<InboundCount>,
}

impl SyncLog {
    pub fn error_rate(&self) -> Option<f64> {
        (self.attempts > 0).then(|| self.failed_attempts as f64 / self.attempts as f64)
    }

    pub fn assess(&self) -> Assessment {
        let mut a = Assessment::new();
        if let Some(rate) = self.error_rate()
            && rate > ERROR_RATE_TARGET
        {
            a.raise(
                Verdict::Problem,
                format!(
                    "error rate {} ({} of {} CRM attempts failed) is above seed 000's 1 % target",
                    percent(rate),
                    self.failed_attempts,
                    self.attempts
                ),
            );
        }
        if !self.dead_letters.is_empty() {
            a.raise(
                Verdict::Problem,
                format!(
                    "{} dead-lettered step(s) wait for a replay (`callside replay --call`)",
                    self.dead_letters.len()
                ),
            );
        }
        if !self.parked.is_empty() {
            a.raise(
                Verdict::Problem,
                format!("{} step(s) parked on a revoked CRM connection: re-authorize it", self.parked.len()),
            );
        }
        if let Some(l) = self.latency
            && l.p95 > LATENCY_TARGET
        {
            a.raise(
                Verdict::Attention,
                format!("p95 hangup → synced latency {} is above seed 000's 5 s target", secs(l.p95)),
            );
        }
        if self.notices.1 > 0 {
            a.raise(
                Verdict::Problem,
                format!("{} cancellation notice(s) not delivered to the webhook", self.notices.1),
            );
        }
        if self.awaiting_review > 0 {
            a.raise(
                Verdict::Attention,
                format!("{} call(s) wait for review (approve or reject)", self.awaiting_review),
            );
        }
        a
    }
}

/// A CRM record in the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef {
    pub id: String,
    pub url: Option<String>,
    /// Created by callside's write-back (one of the window's calls).
    pub created_by_callside: bool,
}

/// One phone or email held by more than one CRM record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// `phone` or `email`.
    pub by: &'static str,
    /// Redacted.
    pub value: String,
    pub records: Vec<RecordRef>,
    /// The window's calls from this caller.
    pub calls: Vec<String>,
}

/// Section 2.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DuplicateScan {
    /// Distinct caller phones and emails in the window.
    pub identities: usize,
    /// How many of them were searched (at most [`MAX_IDENTITIES`]).
    pub searched: usize,
    /// Vendor requests those searches made (charged to the tenant's CRM budget), when counted.
    pub requests: Option<u64>,
    pub duplicates: Vec<Duplicate>,
    /// The service's own ambiguous matches (each left a new contact and a review task).
    pub ambiguous: Vec<Entry>,
    /// Searches that failed (redacted value, error).
    pub errors: Vec<(String, String)>,
}

impl DuplicateScan {
    pub fn assess(&self) -> Assessment {
        let mut a = Assessment::new();
        for d in &self.duplicates {
            let ours = d.records.iter().filter(|r| r.created_by_callside).count();
            if ours > 0 {
                a.raise(
                    Verdict::Problem,
                    format!(
                        "{} {} is held by {} records, {ours} created by callside: a sync duplicate to merge",
                        d.by,
                        d.value,
                        d.records.len()
                    ),
                );
            } else {
                a.raise(
                    Verdict::Attention,
                    format!(
                        "{} {} is held by {} records (none created by callside: a shared line or an older duplicate)",
                        d.by,
                        d.value,
                        d.records.len()
                    ),
                );
            }
        }
        if !self.ambiguous.is_empty() {
            a.raise(
                Verdict::Attention,
                format!("{} ambiguous match(es) left a contact and a review task to settle", self.ambiguous.len()),
            );
        }
        if !self.errors.is_empty() {
            a.raise(Verdict::Problem, format!("{} CRM search(es) failed: the scan is incomplete", self.errors.len()));
        }
        if self.searched < self.identities {
            a.raise(
                Verdict::Attention,
                format!("only the {} newest of {} caller identities were searched", self.searched, self.identities),
            );
        }
        a
    }
}

/// A calendar event in the report (no title: it may name the customer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    pub calendar_id: String,
    pub event_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
    /// The call that created it, when callside did (its own-event marker).
    pub call_id: Option<String>,
}

/// Two busy events of one staff member that overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlap {
    pub staff_id: String,
    pub first: EventRef,
    pub second: EventRef,
}

impl Overlap {
    pub fn involves_callside(&self) -> bool {
        self.first.call_id.is_some() || self.second.call_id.is_some()
    }
}

/// Section 3.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CalendarScan {
    pub from: Option<Timestamp>,
    pub to: Option<Timestamp>,
    /// (staff id, calendar id, busy events listed).
    pub calendars: Vec<(String, String, usize)>,
    pub overlaps: Vec<Overlap>,
    pub requests: Option<u64>,
    /// (calendar id, error).
    pub errors: Vec<(String, String)>,
}

impl CalendarScan {
    pub fn assess(&self) -> Assessment {
        let mut a = Assessment::new();
        for o in &self.overlaps {
            if o.involves_callside() {
                let call = o.first.call_id.as_ref().or(o.second.call_id.as_ref()).cloned().unwrap_or_default();
                a.raise(
                    Verdict::Problem,
                    format!(
                        "{} is double-booked: events {} and {} overlap, one created by callside (call {call})",
                        o.staff_id, o.first.event_id, o.second.event_id
                    ),
                );
            } else {
                a.raise(
                    Verdict::Attention,
                    format!(
                        "{} has overlapping events {} and {} (neither created by callside)",
                        o.staff_id, o.first.event_id, o.second.event_id
                    ),
                );
            }
        }
        if !self.errors.is_empty() {
            a.raise(Verdict::Problem, format!("{} calendar(s) could not be listed", self.errors.len()));
        }
        a
    }
}

/// One customer looked up at the POS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PosTry {
    /// Redacted.
    pub caller: String,
    /// `found`, `not found`, `ambiguous (N profiles)` or the error.
    pub result: String,
    pub newest_order: Option<Timestamp>,
}

/// Section 4.
#[derive(Debug, Clone, PartialEq)]
pub enum PosCheck {
    NotConfigured,
    Checked { vendor: String, tries: Vec<PosTry>, failed: usize, requests: Option<u64> },
}

impl PosCheck {
    pub fn newest_order(&self) -> Option<Timestamp> {
        match self {
            PosCheck::NotConfigured => None,
            PosCheck::Checked { tries, .. } => tries.iter().filter_map(|t| t.newest_order).max(),
        }
    }

    pub fn assess(&self, window: &Window) -> Assessment {
        let mut a = Assessment::new();
        let PosCheck::Checked { tries, failed, .. } = self else {
            return a;
        };
        if *failed > 0 {
            a.raise(Verdict::Problem, format!("the POS failed {failed} of {} lookup(s)", tries.len()));
        }
        if tries.is_empty() {
            a.raise(Verdict::Attention, "no caller with a number in the window to test the POS with".into());
        } else if !tries.iter().any(|t| t.result == "found") && *failed < tries.len() {
            a.raise(Verdict::Attention, format!("none of the {} most recent callers is a POS customer", tries.len()));
        }
        match self.newest_order() {
            Some(newest) if newest < window.from => a.raise(
                Verdict::Attention,
                format!(
                    "the newest order seen is from {}, before the window: check the POS feed is current",
                    newest.strftime("%Y-%m-%d")
                ),
            ),
            _ => {}
        }
        a
    }
}

/// The whole report.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditReport {
    pub tenant_id: String,
    pub tenant_name: String,
    pub time_zone: jiff::tz::TimeZone,
    pub time_zone_name: String,
    pub crm_vendor: String,
    pub calendar_provider: String,
    pub window: Window,
    pub sync: SyncLog,
    pub duplicates: DuplicateScan,
    pub calendar: CalendarScan,
    pub pos: PosCheck,
}

pub const SECTIONS: [&str; 4] =
    ["1. Sync and delivery log", "2. Duplicate contacts in the CRM", "3. Calendar overlaps", "4. POS data freshness"];

impl AuditReport {
    /// The four sections' assessments, in order.
    pub fn assessments(&self) -> [Assessment; 4] {
        [self.sync.assess(), self.duplicates.assess(), self.calendar.assess(), self.pos.assess(&self.window)]
    }

    /// Whether any section is a problem (`callside audit` exits 1).
    pub fn has_problem(&self) -> bool {
        self.assessments().iter().any(|a| a.verdict == Verdict::Problem)
    }

    fn time(&self, t: Timestamp) -> String {
        t.to_zoned_datetime(self.time_zone.clone()).strftime("%Y-%m-%d %H:%M").to_string()
    }

    /// The Markdown report. No personal data: callers are redacted, events have no titles.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &self.window;
        let a = self.assessments();
        md.push_str(&format!("# callside audit: {} ({})\n\n", self.tenant_name, self.tenant_id));
        md.push_str(&format!(
            "Window: {} to {} ({}), the last {} day(s). CRM: {}. Calendar: {}.\n\n",
            self.time(w.from),
            self.time(w.to),
            self.time_zone_name,
            w.days,
            self.crm_vendor,
            self.calendar_provider
        ));
        md.push_str("| Section | Verdict |\n|---|---|\n");
        for (name, a) in SECTIONS.iter().zip(&a) {
            md.push_str(&format!("| {name} | {} |\n", a.verdict.as_str()));
        }
        let heading = |md: &mut String, i: usize| {
            md.push_str(&format!("\n## {}: {}\n\n", SECTIONS[i], a[i].verdict.as_str()));
            for r in &a[i].reasons {
                md.push_str(&format!("- **{}**: {r}\n", a[i].verdict.as_str()));
            }
            if !a[i].reasons.is_empty() {
                md.push('\n');
            }
        };

        heading(&mut md, 0);
        let s = &self.sync;
        md.push_str(&format!("Calls in the window: {}.\n\n", s.calls));
        if !s.by_status.is_empty() {
            md.push_str("| Sync status | Calls |\n|---|---|\n");
            for (label, n) in &s.by_status {
                md.push_str(&format!("| {label} | {n} |\n"));
            }
            md.push('\n');
        }
        if !s.steps.is_empty() {
            md.push_str("| Step | Done | Pending | Dead-lettered | Parked | Retries |\n|---|---|---|---|---|---|\n");
            for (k, t) in &s.steps {
                md.push_str(&format!(
                    "| {k} | {} | {} | {} | {} | {} |\n",
                    t.done, t.pending, t.dead, t.parked, t.retries
                ));
            }
            md.push('\n');
        }
        md.push_str(&format!(
            "- Error rate: {} ({} failed of {} CRM attempts; target under 1 %).\n",
            s.error_rate().map_or_else(|| "n/a".to_owned(), percent),
            s.failed_attempts,
            s.attempts
        ));
        match s.latency {
            Some(l) => md.push_str(&format!(
                "- Hangup → synced: p50 {}, p95 {}, max {} over {} synced call(s) (target under 5 s).\n",
                secs(l.p50),
                secs(l.p95),
                secs(l.max),
                l.samples
            )),
            None => md.push_str("- Hangup → synced: no synced call with write-back steps in the window.\n"),
        }
        let hooks = s.steps.get(kind::WEBHOOK);
        md.push_str(&format!(
            "- Outbound webhooks: write-back webhook steps {} delivered, {} dead-lettered, {} pending; \
             cancellation notices {} delivered, {} failed.\n",
            hooks.map_or(0, |t| t.done),
            hooks.map_or(0, |t| t.dead),
            hooks.map_or(0, |t| t.pending),
            s.notices.0,
            s.notices.1
        ));
        if s.inbound.is_empty() {
            md.push_str("- Inbound deliveries accepted: none recorded in the window.\n");
        } else {
            let list: Vec<String> = s.inbound.iter().map(|c| format!("{} {} {}", c.vendor, c.kind, c.count)).collect();
            md.push_str(&format!("- Inbound deliveries accepted (vendor, kind, count): {}.\n", list.join("; ")));
        }
        md.push_str(
            "- Inbound requests refused (bad signature, stale, replayed) are not kept in the store: \
             see `callside_inbound_requests{vendor,outcome}` in `/metrics`.\n",
        );
        if !s.dead_letters.is_empty() || !s.parked.is_empty() {
            md.push_str(
                "\n| Waiting step | Call | Kind | Attempts | Since | Last error |\n|---|---|---|---|---|---|\n",
            );
            for (what, list) in [("dead-lettered", &s.dead_letters), ("parked", &s.parked)] {
                for d in list {
                    md.push_str(&format!(
                        "| {what} {} | {} | {} | {} | {} | {} |\n",
                        d.step_id,
                        d.call_id,
                        d.kind,
                        d.attempts,
                        self.time(d.updated_at),
                        table_cell(d.last_error.as_deref().unwrap_or("-"))
                    ));
                }
            }
        }

        heading(&mut md, 1);
        let d = &self.duplicates;
        md.push_str(&format!(
            "Searched {} of {} distinct caller phone(s)/email(s) from the window in the CRM{}.\n\n",
            d.searched,
            d.identities,
            d.requests.map(|n| format!(" ({n} vendor request(s))")).unwrap_or_default()
        ));
        if d.duplicates.is_empty() {
            md.push_str("No phone or email of a caller is held by more than one record.\n");
        } else {
            md.push_str("| By | Value | Records | Calls |\n|---|---|---|---|\n");
            for dup in &d.duplicates {
                let records: Vec<String> = dup
                    .records
                    .iter()
                    .map(|r| {
                        let id = match &r.url {
                            Some(u) => format!("[{}]({u})", r.id),
                            None => r.id.clone(),
                        };
                        if r.created_by_callside { format!("{id} (created by callside)") } else { id }
                    })
                    .collect();
                md.push_str(&format!(
                    "| {} | {} | {} | {} |\n",
                    dup.by,
                    dup.value,
                    records.join(", "),
                    dup.calls.join(", ")
                ));
            }
        }
        if !d.ambiguous.is_empty() {
            md.push_str("\nThe service's ambiguous matches:\n\n");
            for e in &d.ambiguous {
                md.push_str(&format!(
                    "- {} call {}: {} {}\n",
                    e.at,
                    e.call_id.as_deref().unwrap_or("-"),
                    e.detail,
                    e.fix.description
                ));
            }
        }
        for (value, error) in &d.errors {
            md.push_str(&format!("- search for {value} failed: {error}\n"));
        }

        heading(&mut md, 2);
        let c = &self.calendar;
        if let (Some(from), Some(to)) = (c.from, c.to) {
            md.push_str(&format!(
                "Busy events from {} to {} (the window and the booking horizon ahead){}.\n\n",
                self.time(from),
                self.time(to),
                c.requests.map(|n| format!(", {n} provider request(s)")).unwrap_or_default()
            ));
        }
        if !c.calendars.is_empty() {
            md.push_str("| Staff | Calendar | Busy events |\n|---|---|---|\n");
            for (staff, cal, n) in &c.calendars {
                md.push_str(&format!("| {staff} | {cal} | {n} |\n"));
            }
            md.push('\n');
        }
        if c.overlaps.is_empty() {
            md.push_str("No overlapping busy events.\n");
        } else {
            md.push_str("| Staff | Event | Time | Other event | Time |\n|---|---|---|---|---|\n");
            let ev = |e: &EventRef| match &e.call_id {
                Some(call) => format!("{} (callside, call {call})", e.event_id),
                None => e.event_id.clone(),
            };
            for o in &c.overlaps {
                md.push_str(&format!(
                    "| {} | {} | {}–{} | {} | {}–{} |\n",
                    o.staff_id,
                    ev(&o.first),
                    self.time(o.first.start),
                    self.time(o.first.end),
                    ev(&o.second),
                    self.time(o.second.start),
                    self.time(o.second.end)
                ));
            }
        }
        for (cal, error) in &c.errors {
            md.push_str(&format!("- calendar {cal} could not be listed: {error}\n"));
        }

        heading(&mut md, 3);
        match &self.pos {
            PosCheck::NotConfigured => md.push_str("The tenant has no `[pos]`: nothing to check.\n"),
            PosCheck::Checked { vendor, tries, requests, .. } => {
                md.push_str(&format!(
                    "{vendor}: the most recent callers looked up{}.\n\n",
                    requests.map(|n| format!(" ({n} vendor request(s))")).unwrap_or_default()
                ));
                if !tries.is_empty() {
                    md.push_str("| Caller | Result | Newest order |\n|---|---|---|\n");
                    for t in tries {
                        md.push_str(&format!(
                            "| {} | {} | {} |\n",
                            t.caller,
                            table_cell(&t.result),
                            t.newest_order.map_or_else(|| "-".to_owned(), |o| self.time(o))
                        ));
                    }
                    md.push('\n');
                }
                match self.pos.newest_order() {
                    Some(o) => md.push_str(&format!(
                        "Newest order seen: {} ({} before now).\n",
                        self.time(o),
                        days_ago(self.window.to.duration_since(o))
                    )),
                    None => md.push_str("No order seen.\n"),
                }
            }
        }
        md.push_str(
            "\nInventory counts are not something callside reads (it reads customers' purchases only): \
             compare stock against the till yourself.\n",
        );
        md
    }
}

fn percent(rate: f64) -> String {
    format!("{:.2} %", rate * 100.0)
}

fn secs(d: SignedDuration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn days_ago(d: SignedDuration) -> String {
    let hours = d.as_secs() / 3600;
    if hours < 48 { format!("{hours} h") } else { format!("{} days", hours / 24) }
}

/// Text safe inside a Markdown table cell.
fn table_cell(s: &str) -> String {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let mut out = one_line.replace('|', "\\|");
    if out.chars().count() > 160 {
        out = out.chars().take(159).collect::<String>() + "…";
    }
    out
}

/// Busy events of one staff member that overlap, each pair once, earliest first. The same event
/// seen on two of their calendars (an invitation) is not a double booking.
pub fn overlaps(staff_id: &str, mut events: Vec<EventRef>) -> Vec<Overlap> {
    events.sort_by(|a, b| (a.start, a.end, &a.event_id).cmp(&(b.start, b.end, &b.event_id)));
    let mut out = Vec::new();
    for (i, a) in events.iter().enumerate() {
        for b in &events[i + 1..] {
            if b.start >= a.end {
                break;
            }
            if b.event_id != a.event_id && b.start < a.end && a.start < b.end {
                out.push(Overlap { staff_id: staff_id.to_owned(), first: a.clone(), second: b.clone() });
            }
        }
    }
    out
}

fn busy_ref(calendar_id: &str, e: &CalendarEvent) -> Option<EventRef> {
    (e.busy && e.status != "cancelled").then(|| EventRef {
        calendar_id: calendar_id.to_owned(),
        event_id: e.id.clone(),
        start: e.start,
        end: e.end,
        call_id: e.call_id.clone(),
    })
}

/// Requests charged to the tenant's `vendor` account so far (both lanes).
fn sent(budgets: Option<&RateBudgets>, vendor: &str, tenant: &str) -> Option<u64> {
    budgets.map(|b| {
        let s = b.sent(vendor, tenant);
        s.live + s.writeback
    })
}

/// Gathers the report for `tenant` over the `days` before `now`. Store errors end the audit;
/// a vendor's errors are findings of their section. Vendor requests run in the write-back lane
/// (they wait for the lane's share of the account's budget rather than take the live reserve) and
/// are counted from `budgets` when given.
pub async fn run(
    store: &Store,
    tenant: &Tenant,
    budgets: Option<&RateBudgets>,
    now: Timestamp,
    days: u32,
) -> Result<AuditReport, StoreError> {
    let config = &tenant.config;
    let window = Window::ending_at(now, &config.time_zone, days);
    let calls = view::between(store, config, window.from, window.to).await?;
    let rows = store.calls_started_between(tenant.id(), window.from, window.to).await?;
    let steps = store.step_outcomes_between(tenant.id(), window.from, window.to).await?;
    let reconciliation = reconcile::reconcile_between(store, tenant, window.from, window.to).await?;

    // 1. Sync and delivery log.
    let mut sync = SyncLog { calls: calls.len(), ..SyncLog::default() };
    let order = [
        SyncStatus::Synced,
        SyncStatus::Partial,
        SyncStatus::NeedsReview,
        SyncStatus::Failed,
        SyncStatus::Parked,
        SyncStatus::Pending,
        SyncStatus::Open,
        SyncStatus::Shadow,
        SyncStatus::Rejected,
    ];
    for status in order {
        let n = calls.iter().filter(|c| c.status == status).count();
        if n > 0 {
            sync.by_status.push((status.label(), n));
        }
    }
    sync.awaiting_review = calls.iter().filter(|c| c.status == SyncStatus::NeedsReview).count();
    for s in &steps {
        sync.steps.entry(s.kind.clone()).or_default().add(s);
    }
    let synced: HashSet<&str> =
        calls.iter().filter(|c| c.status == SyncStatus::Synced).map(|c| c.call_id.as_str()).collect();
    let mut settled: HashMap<&str, (i64, i64)> = HashMap::new();
    for s in steps.iter().filter(|s| synced.contains(s.call_id.as_str())) {
        if let Some(ended) = s.call_ended_at {
            let e = settled.entry(s.call_id.as_str()).or_insert((ended, s.updated_at));
            e.1 = e.1.max(s.updated_at);
        }
    }
    sync.latency =
        Latency::of(settled.values().map(|(ended, last)| SignedDuration::from_millis((last - ended).max(0))).collect());
    let health = store.tenant_health(tenant.id(), window.from).await?;
    (sync.attempts, sync.failed_attempts) = (health.attempts, health.failures);
    sync.dead_letters = store.steps_in_status(Some(tenant.id()), "dead", LIST_LIMIT).await?;
    sync.parked = store.steps_in_status(Some(tenant.id()), "parked", LIST_LIMIT).await?;
    for (_, row) in store.audit_entries_since(tenant.id(), "notify.webhook", window.from).await? {
        if row.detail.get("ok").and_then(Value::as_bool) == Some(true) {
            sync.notices.0 += 1;
        } else {
            sync.notices.1 += 1;
        }
    }
    sync.inbound = store.inbound_counts_between(tenant.id(), window.from, window.to).await?;

    // The window's callers, newest first: phones (E.164 as stored) and emails from the outcomes.
    let mut identities: Vec<(&'static str, String, String)> = Vec::new(); // (by, value, call id)
    for c in rows.iter().rev() {
        if let Some(phone) = &c.caller {
            identities.push(("phone", phone.clone(), c.call_id.clone()));
        }
        if let Some(email) =
            c.outcome.as_ref().and_then(|o| o.get("caller_email")).and_then(Value::as_str).and_then(normalize_email)
        {
            identities.push(("email", email, c.call_id.clone()));
        }
    }
    let mut calls_of: BTreeMap<(&'static str, String), Vec<String>> = BTreeMap::new();
    let mut distinct: Vec<(&'static str, String)> = Vec::new();
    for (by, value, call) in identities {
        let key = (by, value);
        if !calls_of.contains_key(&key) {
            distinct.push(key.clone());
        }
        let list = calls_of.entry(key).or_default();
        if !list.contains(&call) {
            list.push(call);
        }
    }
    let ids: Vec<String> = rows.iter().map(|c| c.call_id.clone()).collect();
    let created: HashSet<String> = store
        .created_objects_for_calls(tenant.id(), &ids)
        .await?
        .into_iter()
        .filter(|(_, t, _)| t == "contact")
        .map(|(_, _, id)| id)
        .collect();

    let vendor_reads = async {
        // 2. Duplicate contacts.
        let crm_before = sent(budgets, &config.crm.vendor, tenant.id());
        let mut dup = DuplicateScan {
            identities: distinct.len(),
            ambiguous: reconciliation.possible_duplicates.clone(),
            ..DuplicateScan::default()
        };
        for (by, value) in distinct.iter().take(MAX_IDENTITIES) {
            dup.searched += 1;
            let redacted = if *by == "phone" { redact_phone(value) } else { redact_email(value) };
            let found = match *by {
                "phone" => match Phone::parse(value, config.default_region) {
                    ParsedPhone::Number(p) => tenant.crm.find_contacts_by_phone(&p.query()).await.map(|cands| {
                        cands
                            .into_iter()
                            .filter(|c| c.phones.iter().any(|s| same_number(&p, s, config.default_region)))
                            .map(|c| c.id)
                            .collect::<Vec<_>>()
                    }),
                    _ => Ok(Vec::new()),
                },
                _ => tenant.crm.find_contacts_by_email(value).await.map(|cands| {
                    cands
                        .into_iter()
                        .filter(|c| c.email.as_deref().and_then(normalize_email).as_deref() == Some(value.as_str()))
                        .map(|c| c.id)
                        .collect()
                }),
            };
            match found {
                Ok(mut record_ids) => {
                    record_ids.sort();
                    record_ids.dedup();
                    if record_ids.len() > 1 {
                        dup.duplicates.push(Duplicate {
                            by,
                            value: redacted,
                            records: record_ids
                                .into_iter()
                                .map(|id| RecordRef {
                                    url: crm_record_url(config, "contact", &id),
                                    created_by_callside: created.contains(&id),
                                    id,
                                })
                                .collect(),
                            calls: calls_of.get(&(*by, value.clone())).cloned().unwrap_or_default(),
                        });
                    }
                }
                Err(e) => dup.errors.push((redacted, e.to_string())),
            }
        }
        dup.requests = sent(budgets, &config.crm.vendor, tenant.id()).zip(crm_before).map(|(a, b)| a - b);

        // 3. Calendar overlaps: the window and the booking horizon ahead.
        let horizon = SignedDuration::from_hours(24 * i64::from(config.rules.horizon_days));
        let span = Interval::new(window.from, window.to + horizon);
        let calendar_vendor = config.calendar.vendor.clone();
        let cal_before = sent(budgets, &calendar_vendor, tenant.id());
        let mut cal = CalendarScan { from: Some(span.start), to: Some(span.end), ..CalendarScan::default() };
        for staff in &config.staff {
            let mut events = Vec::new();
            for calendar_id in &staff.calendar_ids {
                match tenant.calendar.list_events(calendar_id, span).await {
                    Ok(list) => {
                        let busy: Vec<EventRef> = list.iter().filter_map(|e| busy_ref(calendar_id, e)).collect();
                        cal.calendars.push((staff.id.clone(), calendar_id.clone(), busy.len()));
                        events.extend(busy);
                    }
                    Err(e) => cal.errors.push((calendar_id.clone(), e.to_string())),
                }
            }
            cal.overlaps.extend(overlaps(&staff.id, events));
        }
        cal.requests = sent(budgets, &calendar_vendor, tenant.id()).zip(cal_before).map(|(a, b)| a - b);

        // 4. POS freshness: the most recent callers until one is a customer.
        let pos = match (&tenant.pos, &config.pos) {
            (Some(connector), Some(section)) => {
                let before = sent(budgets, &section.vendor, tenant.id());
                let mut tries = Vec::new();
                let mut failed = 0;
                let phones = distinct.iter().filter(|(by, _)| *by == "phone").take(MAX_POS_LOOKUPS);
                for (_, phone) in phones {
                    let (result, newest_order) = match connector.by_phone(phone).await {
                        Ok(PosMatch::Found(summary)) => {
                            ("found".to_owned(), summary.last_purchases.iter().filter_map(|p| p.at).max())
                        }
                        Ok(PosMatch::NotFound) => ("not found".to_owned(), None),
                        Ok(PosMatch::Ambiguous(n)) => (format!("ambiguous ({n} profiles)"), None),
                        Err(e) => {
                            failed += 1;
                            (format!("error: {e}"), None)
                        }
                    };
                    let found = result == "found";
                    tries.push(PosTry { caller: redact_phone(phone), result, newest_order });
                    if found {
                        break;
                    }
                }
                let requests = sent(budgets, &section.vendor, tenant.id()).zip(before).map(|(a, b)| a - b);
                PosCheck::Checked { vendor: connector.vendor().to_owned(), tries, failed, requests }
            }
            _ => PosCheck::NotConfigured,
        };
        (dup, cal, pos)
    };
    let (duplicates, calendar, pos) = crate::connectors::rate::writeback_lane(vendor_reads).await;

    Ok(AuditReport {
        tenant_id: config.id.clone(),
        tenant_name: config.name.clone(),
        time_zone: config.time_zone.clone(),
        time_zone_name: config.time_zone_name.clone(),
        crm_vendor: config.crm.vendor.clone(),
        calendar_provider: tenant.calendar.provider().to_owned(),
        window,
        sync,
        duplicates,
        calendar,
        pos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn ev(id: &str, start: &str, end: &str, call: Option<&str>) -> EventRef {
        EventRef {
            calendar_id: "cal".into(),
            event_id: id.into(),
            start: ts(start),
            end: ts(end),
            call_id: call.map(str::to_owned),
        }
    }

    #[test]
    fn overlapping_busy_events_are_paired_once_and_touching_ones_are_not() {
        let events = vec![
            ev("a", "2026-11-23T14:00:00Z", "2026-11-23T15:00:00Z", None),
            ev("b", "2026-11-23T15:00:00Z", "2026-11-23T15:30:00Z", Some("call-1")),
            ev("c", "2026-11-23T15:15:00Z", "2026-11-23T16:00:00Z", None),
            ev("a", "2026-11-23T14:00:00Z", "2026-11-23T15:00:00Z", None),
            ev("d", "2026-11-23T13:00:00Z", "2026-11-23T17:00:00Z", None),
        ];
        let found: Vec<(String, String)> =
            overlaps("alex", events).into_iter().map(|o| (o.first.event_id, o.second.event_id)).collect();
        assert_eq!(
            found,
            [("d", "a"), ("d", "a"), ("d", "b"), ("d", "c"), ("b", "c")]
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .to_vec(),
            "a touching pair (a ends as b starts) and the same event twice are not overlaps"
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let l = Latency::of((1..=20).map(SignedDuration::from_secs).collect()).unwrap();
        assert_eq!(
            (l.samples, l.p50, l.p95, l.max),
            (20, SignedDuration::from_secs(10), SignedDuration::from_secs(19), SignedDuration::from_secs(20))
        );
        let one = Latency::of(vec![SignedDuration::from_millis(1200)]).unwrap();
        assert_eq!((one.p50, one.p95), (SignedDuration::from_millis(1200), SignedDuration::from_millis(1200)));
        assert_eq!(Latency::of(vec![]), None);
    }

    #[test]
    fn the_sync_verdict_follows_seed_000s_targets() {
        let mut s = SyncLog { attempts: 200, failed_attempts: 2, ..SyncLog::default() };
        assert_eq!(s.assess().verdict, Verdict::Ok, "exactly 1 % is on target");
        s.failed_attempts = 3;
        let a = s.assess();
        assert_eq!(a.verdict, Verdict::Problem);
        assert!(a.reasons[0].contains("1.50 %"), "{:?}", a.reasons);
        let slow = SyncLog { latency: Latency::of(vec![SignedDuration::from_secs(6)]), ..SyncLog::default() };
        assert_eq!(slow.assess().verdict, Verdict::Attention);
    }

    #[test]
    fn the_window_starts_at_midnight_in_the_tenants_zone() {
        let tz = jiff::tz::TimeZone::get("America/New_York").unwrap();
        let w = Window::ending_at(ts("2026-11-23T13:00:00Z"), &tz, 30);
        assert_eq!(w.from, ts("2026-10-24T04:00:00Z"), "midnight EDT on 24 October");
        assert_eq!(w.to, ts("2026-11-23T13:00:00Z"));
    }

    #[test]
    fn a_table_cell_cannot_break_the_table() {
        assert_eq!(table_cell("a|b\nc"), "a\\|b c");
    }
}
