//! The slot engine: which appointment starts are bookable, and which few of them to offer a
//! caller. Everything here is pure — no I/O, no clock (callers pass `now`) — so the answer to
//! "when can I come in?" is computed in microseconds and tested exhaustively.
//!
//! # Time model
//!
//! Opening hours are wall-clock times in each staff member's own zone. Candidate starts are the
//! local times `open, open + interval, open + 2·interval, …` of every opening range, so a 09:00
//! slot is at 09:00 local on both sides of a daylight-saving change. Local times are resolved to
//! instants like this:
//!
//! - a local start that does not exist (the hour skipped when clocks spring forward) yields no
//!   slot;
//! - a local start that occurs twice (the hour repeated when clocks fall back) yields one slot,
//!   at the earlier occurrence (jiff's "compatible"/"earlier" resolution) — never a duplicate;
//! - a slot's end is its start plus the service duration in absolute time, and it must not be
//!   later than the range's closing instant. The closing time is resolved with jiff's
//!   "compatible" rule (RFC 5545 / Temporal): in a fold the earlier occurrence, in a gap the
//!   local time read with the offset in force before the gap. A `close` of `00:00` means
//!   midnight at the end of the day; any other `close <= open` is an empty range.
//!
//! Buffers (`buffer_before_minutes`, `buffer_after_minutes`) guard against busy time but do NOT
//! need to fit inside opening hours: a 09:00 opening with a 15 minute prep buffer still offers
//! 09:00. Staff are assumed to prepare before opening and tidy up after closing; to keep buffers
//! inside opening hours, shorten the ranges in the configuration instead.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::ops::ControlFlow;

use jiff::civil::{Date, DateTime, Time, Weekday};
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};

use crate::connectors::calendar::Interval;

/// A bookable service ("initial consultation", "teeth cleaning").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceType {
    pub id: String,
    pub name: String,
    pub duration_minutes: u32,
    #[serde(default)]
    pub buffer_before_minutes: u32,
    #[serde(default)]
    pub buffer_after_minutes: u32,
    /// Other ways callers name the service; matched by [`resolve_service`].
    #[serde(default)]
    pub synonyms: Vec<String>,
    /// Staff who perform it; empty means every staff member.
    #[serde(default)]
    pub staff_ids: Vec<String>,
}

impl ServiceType {
    pub fn duration(&self) -> SignedDuration {
        minutes(self.duration_minutes)
    }

    /// Whether `staff_id` performs this service.
    pub fn is_offered_by(&self, staff_id: &str) -> bool {
        self.staff_ids.is_empty() || self.staff_ids.iter().any(|s| s == staff_id)
    }
}

/// One opening range of a day, local wall-clock time, `[open, close)`. A `close` of `00:00`
/// means midnight at the end of the day; any other `close <= open` is an empty range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpeningHours {
    pub open: Time,
    pub close: Time,
}

impl OpeningHours {
    /// The range on `date` as civil datetimes, or `None` when it is empty.
    pub fn on_date(&self, date: Date) -> Option<(DateTime, DateTime)> {
        let open = date.to_datetime(self.open);
        let close = if self.close == Time::midnight() {
            date.tomorrow().ok()?.to_datetime(Time::midnight())
        } else {
            date.to_datetime(self.close)
        };
        (open < close).then_some((open, close))
    }
}

/// Opening hours per weekday; several ranges a day are allowed (a lunch break is two ranges).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WeeklyHoursRepr", into = "WeeklyHoursRepr")]
pub struct WeeklyHours {
    days: [Vec<OpeningHours>; 7],
}

impl WeeklyHours {
    /// `days[0]` is Monday, `days[6]` Sunday.
    pub fn new(days: [Vec<OpeningHours>; 7]) -> Self {
        Self { days }
    }

    /// The same ranges every day of the week.
    pub fn every_day(ranges: Vec<OpeningHours>) -> Self {
        Self { days: std::array::from_fn(|_| ranges.clone()) }
    }

    pub fn on(&self, weekday: Weekday) -> &[OpeningHours] {
        &self.days[weekday_index(weekday)]
    }
}

fn weekday_index(weekday: Weekday) -> usize {
    // 0..=6 by construction.
    weekday.to_monday_zero_offset().unsigned_abs() as usize
}

/// Serde shape of [`WeeklyHours`]: `{ monday = [...], tuesday = [...] }`, missing days closed.
#[derive(Serialize, Deserialize, Default)]
#[serde(default)]
struct WeeklyHoursRepr {
    monday: Vec<OpeningHours>,
    tuesday: Vec<OpeningHours>,
    wednesday: Vec<OpeningHours>,
    thursday: Vec<OpeningHours>,
    friday: Vec<OpeningHours>,
    saturday: Vec<OpeningHours>,
    sunday: Vec<OpeningHours>,
}

impl From<WeeklyHoursRepr> for WeeklyHours {
    fn from(r: WeeklyHoursRepr) -> Self {
        Self::new([r.monday, r.tuesday, r.wednesday, r.thursday, r.friday, r.saturday, r.sunday])
    }
}

impl From<WeeklyHours> for WeeklyHoursRepr {
    fn from(h: WeeklyHours) -> Self {
        let [monday, tuesday, wednesday, thursday, friday, saturday, sunday] = h.days;
        Self { monday, tuesday, wednesday, thursday, friday, saturday, sunday }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaffMember {
    pub id: String,
    pub name: String,
    /// The zone the staff member's opening hours are written in.
    #[serde(with = "jiff::fmt::serde::tz::required")]
    pub time_zone: TimeZone,
    pub hours: WeeklyHours,
    #[serde(default)]
    pub calendar_ids: Vec<String>,
    /// Local dates on which the staff member does not work at all.
    #[serde(default)]
    pub closed_dates: Vec<Date>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleRules {
    /// Spacing of candidate starts, aligned to each range's opening time. `0` means "the
    /// service duration" (back-to-back appointments).
    pub slot_interval_minutes: u32,
    /// A slot must start at least this long after `now`.
    pub min_notice_minutes: u32,
    /// A slot must start before `now + horizon_days × 24 h` (absolute days, not calendar days).
    pub horizon_days: u32,
}

/// Busy time of one staff member: calendar free/busy, live holds and known bookings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Busy {
    pub staff_id: String,
    pub interval: Interval,
}

/// A bookable appointment: `[start, end)` with one staff member.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Slot {
    pub staff_id: String,
    pub start: Timestamp,
    pub end: Timestamp,
}

impl Slot {
    pub fn interval(&self) -> Interval {
        Interval::new(self.start, self.end)
    }
}

/// A [`Slot`] borrowing its staff id: what [`enumerate_slot_refs`] returns without allocating a
/// `String` per slot (that allocation is most of [`enumerate_slots`]' cost on a busy month).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotRef<'a> {
    pub staff_id: &'a str,
    pub start: Timestamp,
    pub end: Timestamp,
}

impl SlotRef<'_> {
    pub fn to_slot(&self) -> Slot {
        Slot { staff_id: self.staff_id.to_owned(), start: self.start, end: self.end }
    }
}

impl<'a> From<&'a Slot> for SlotRef<'a> {
    fn from(s: &'a Slot) -> Self {
        SlotRef { staff_id: &s.staff_id, start: s.start, end: s.end }
    }
}

fn minutes(m: u32) -> SignedDuration {
    SignedDuration::from_mins(i64::from(m))
}

/// `t + d`, clamped to the representable range instead of panicking.
fn add(t: Timestamp, d: SignedDuration) -> Timestamp {
    t.checked_add(d).unwrap_or(if d.is_negative() { Timestamp::MIN } else { Timestamp::MAX })
}

/// The time a booking at `start` takes out of the staff member's day:
/// `[start - buffer_before, start + duration + buffer_after)`.
pub fn blocked_interval(service: &ServiceType, start: Timestamp) -> Interval {
    let end = add(start, minutes(service.duration_minutes.saturating_add(service.buffer_after_minutes)));
    Interval::new(add(start, -minutes(service.buffer_before_minutes)), end)
}

/// Every bookable slot of `service` in `window`, sorted by `(start, staff_id)`, no duplicates.
///
/// A local candidate start (see the module docs for the time model) is kept iff
/// `start >= now + min_notice`, `start < now + horizon_days`, `[start, end)` lies inside
/// `window`, `end` is not after the range's closing instant, and its [`blocked_interval`]
/// overlaps none of the staff member's [`Busy`] intervals (as [`Interval::overlaps`]: half-open,
/// touching is fine; intervals with `end < start` are ignored). A zero-length service yields no
/// slots.
///
/// Cost: busy time is sorted and merged once per staff member and probed with a forward-moving
/// cursor (binary search when a probe goes backwards); local opening times are turned into
/// instants with one offset per stretch between zone transitions (a range within 52 hours of
/// a transition is resolved in the zone instead); the inner loop is integer arithmetic;
/// per-staff runs are merged, not re-sorted.
/// Hot paths that only need a few offers should use [`enumerate_slot_refs`] and
/// [`pick_options_from_refs`], which skip the per-slot `String`.
pub fn enumerate_slots(
    rules: &ScheduleRules,
    staff: &[StaffMember],
    service: &ServiceType,
    busy: &[Busy],
    window: Interval,
    now: Timestamp,
) -> Vec<Slot> {
    enumerate_slot_refs(rules, staff, service, busy, window, now).iter().map(SlotRef::to_slot).collect()
}

/// [`enumerate_slots`] without allocating: the same slots, borrowing staff ids from `staff`.
pub fn enumerate_slot_refs<'a>(
    rules: &ScheduleRules,
    staff: &'a [StaffMember],
    service: &ServiceType,
    busy: &[Busy],
    window: Interval,
    now: Timestamp,
) -> Vec<SlotRef<'a>> {
    if service.duration_minutes == 0 {
        return Vec::new();
    }
    let step_minutes = match rules.slot_interval_minutes {
        0 => service.duration_minutes,
        m => m,
    };
    let now_ns = now.as_nanosecond();
    let bounds = Bounds {
        earliest: window.start.as_nanosecond().max(now_ns + minutes_ns(rules.min_notice_minutes)),
        horizon_end: now_ns + i128::from(rules.horizon_days) * 24 * 60 * minutes_ns(1),
        window_end: window.end.as_nanosecond(),
        duration: minutes_ns(service.duration_minutes),
        before: minutes_ns(service.buffer_before_minutes),
        after: minutes_ns(service.buffer_after_minutes),
    };
    if bounds.earliest >= bounds.horizon_end || bounds.earliest + bounds.duration > bounds.window_end {
        return Vec::new();
    }

    // Eligible staff in id order; equal ids share a rank so their slots dedupe.
    let mut eligible: Vec<&'a StaffMember> = staff.iter().filter(|s| service.is_offered_by(&s.id)).collect();
    eligible.sort_by(|a, b| a.id.cmp(&b.id));

    let mut busy_by_staff: HashMap<&str, Vec<Span>> = HashMap::new();
    for b in busy {
        if b.interval.start <= b.interval.end {
            let span = Span { start: b.interval.start.as_nanosecond(), end: b.interval.end.as_nanosecond() };
            busy_by_staff.entry(b.staff_id.as_str()).or_default().push(span);
        }
    }
    for spans in busy_by_staff.values_mut() {
        merge_busy(spans);
    }

    let mut ids: Vec<&'a str> = Vec::new();
    let mut runs: Vec<(u32, Vec<Nanos>)> = Vec::new();
    for member in eligible {
        if ids.last().copied() != Some(member.id.as_str()) {
            ids.push(&member.id);
        }
        let rank = u32::try_from(ids.len() - 1).unwrap_or(u32::MAX);
        let merged = busy_by_staff.get(member.id.as_str()).map_or(&[][..], Vec::as_slice);
        let mut run = Vec::new();
        walk_staff(member, minutes_ns(step_minutes), &bounds, merged, &mut run);
        // Ascending already unless opening ranges overlap or are listed out of order.
        if !run.is_sorted() {
            run.sort_unstable();
        }
        run.dedup();
        if !run.is_empty() {
            runs.push((rank, run));
        }
    }

    // Merge the runs by (start, rank). Staff usually share a grid, so this is one pass over the
    // run heads per distinct start time.
    let mut out = Vec::with_capacity(runs.iter().map(|(_, r)| r.len()).sum());
    let mut heads = vec![0usize; runs.len()];
    while let Some(start) = runs.iter().zip(&heads).filter_map(|((_, run), &h)| run.get(h)).min().copied() {
        let mut last_rank = None;
        for ((rank, run), head) in runs.iter().zip(&mut heads) {
            if run.get(*head) != Some(&start) {
                continue;
            }
            *head += 1;
            if last_rank == Some(*rank) {
                continue; // a duplicate staff entry
            }
            last_rank = Some(*rank);
            if let (Some(start), Some(end)) = (timestamp(start), timestamp(start + bounds.duration)) {
                out.push(SlotRef { staff_id: ids[*rank as usize], start, end });
            }
        }
    }
    out
}

/// [`Nanos`] back to a timestamp; avoids 128-bit division for every date before 2262.
fn timestamp(ns: Nanos) -> Option<Timestamp> {
    match i64::try_from(ns) {
        Ok(ns) => Timestamp::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000) as i32).ok(),
        Err(_) => Timestamp::from_nanosecond(ns).ok(),
    }
}

/// Nanoseconds since the Unix epoch: the engine's inner loop is plain integer arithmetic.
type Nanos = i128;

fn minutes_ns(m: u32) -> Nanos {
    i128::from(m) * 60 * 1_000_000_000
}

/// A half-open `[start, end)` in [`Nanos`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    start: Nanos,
    end: Nanos,
}

/// The instant-side conditions shared by every candidate.
struct Bounds {
    /// `max(window.start, now + min_notice)`: starts must be `>=`.
    earliest: Nanos,
    /// `now + horizon`: starts must be `<`.
    horizon_end: Nanos,
    /// Ends must be `<=`.
    window_end: Nanos,
    duration: Nanos,
    before: Nanos,
    after: Nanos,
}

impl Bounds {
    /// Checks a candidate. Starts arrive in increasing order within an opening range, so once a
    /// start is too late every later one is too: `Break`.
    fn check(&self, start: Nanos, close: Nanos, busy: &mut BusyCursor<'_>) -> ControlFlow<(), bool> {
        let end = start + self.duration;
        if start >= self.horizon_end || end > self.window_end || end > close {
            return ControlFlow::Break(());
        }
        if start < self.earliest {
            return ControlFlow::Continue(false);
        }
        ControlFlow::Continue(busy.is_free(Span { start: start - self.before, end: end + self.after }))
    }
}

/// Sorts and merges busy spans in place into strictly separated spans (touching ones merge).
/// Merging preserves "overlaps some busy span" for every non-empty probe, including for empty
/// busy spans (which, like [`Interval::overlaps`], block a probe that strictly contains them).
fn merge_busy(spans: &mut Vec<Span>) {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::with_capacity(spans.len());
    for &s in spans.iter() {
        match out.last_mut() {
            Some(last) if s.start <= last.end => last.end = last.end.max(s.end),
            _ => out.push(s),
        }
    }
    *spans = out;
}

/// Probes merged, sorted busy spans. Candidates mostly arrive in increasing order, so the
/// position only moves forward; a probe that goes backwards falls back to binary search.
struct BusyCursor<'b> {
    spans: &'b [Span],
    /// Index of the first span ending after the last probe's start.
    pos: usize,
}

impl<'b> BusyCursor<'b> {
    fn new(spans: &'b [Span]) -> Self {
        BusyCursor { spans, pos: 0 }
    }

    /// Whether the non-empty `blocked` overlaps none of the spans.
    fn is_free(&mut self, blocked: Span) -> bool {
        if self.pos > 0 && self.spans[self.pos - 1].end > blocked.start {
            self.pos = self.spans.partition_point(|b| b.end <= blocked.start);
        }
        while self.spans.get(self.pos).is_some_and(|b| b.end <= blocked.start) {
            self.pos += 1;
        }
        self.spans.get(self.pos).is_none_or(|b| b.start >= blocked.end)
    }
}

/// Nanoseconds in a civil day.
const DAY_NS: Nanos = 86_400 * 1_000_000_000;

/// Two instants that read the same on one zone's wall clock are less than 52 hours apart (jiff
/// keeps offsets under 26 hours either way). So a local time whose reading lies at least this far
/// inside a stretch of constant offset has no other reading: it is neither in a gap nor in a fold.
const NO_OTHER_READING: Nanos = 52 * 3_600 * 1_000_000_000;

/// A stretch `[from, until)` of a zone's history during which its UTC offset is `offset` (all in
/// [`Nanos`]). Found with one offset lookup and two transition searches, then reused for every
/// opening range of the stretch — weeks or months — instead of resolving each range in the zone.
#[derive(Debug, Clone, Copy)]
struct OffsetPeriod {
    from: Nanos,
    until: Nanos,
    offset: Nanos,
    utc_offset: Offset,
}

impl OffsetPeriod {
    fn containing(tz: &TimeZone, at: Timestamp) -> OffsetPeriod {
        let offset = tz.to_offset(at);
        let until = tz.following(at).next().map_or(Nanos::MAX, |t| t.timestamp().as_nanosecond());
        // The latest transition before `at` starts the stretch if it switched to this offset;
        // otherwise (whether or not `at` is itself a transition) the stretch starts at `at`.
        let from = match tz.preceding(at).next() {
            None => Nanos::MIN,
            Some(t) if t.offset() == offset => t.timestamp().as_nanosecond(),
            Some(_) => at.as_nanosecond(),
        };
        OffsetPeriod { from, until, offset: i128::from(offset.seconds()) * 1_000_000_000, utc_offset: offset }
    }

    /// `tz.to_datetime(at)`, reusing `period` when it contains `at` (instants mostly arrive in
    /// order, so one lookup serves until the next transition).
    fn to_datetime(period: &mut Option<OffsetPeriod>, tz: &TimeZone, at: Timestamp) -> DateTime {
        let p = match *period {
            Some(p) if p.contains(at.as_nanosecond()) => p,
            _ => *period.insert(OffsetPeriod::containing(tz, at)),
        };
        p.utc_offset.to_datetime(at)
    }

    fn contains(&self, at: Nanos) -> bool {
        self.from <= at && at < self.until
    }

    /// The opening and closing instants of a range read in local [`Nanos`] (wall clock as if
    /// UTC), when both local times are unambiguous and no transition falls between them — the
    /// case in which [`walk_range`] takes its fast path with the same two instants. `None`
    /// near a transition.
    fn resolve(&self, open: Nanos, close: Nanos) -> Option<(Nanos, Nanos)> {
        let (open_at, close_at) = (open - self.offset, close - self.offset);
        (open_at - NO_OTHER_READING >= self.from && close_at + NO_OTHER_READING <= self.until)
            .then_some((open_at, close_at))
    }
}

impl OpeningHours {
    /// `(open, close)` as nanoseconds after local midnight (`close` up to a whole day), or `None`
    /// for an empty range — the same ranges as [`OpeningHours::on_date`].
    fn day_nanos(&self) -> Option<(Nanos, Nanos)> {
        let open = self.open.duration_since(Time::midnight()).as_nanos();
        let close = match self.close.duration_since(Time::midnight()).as_nanos() {
            0 => DAY_NS,
            close => close,
        };
        (open < close).then_some((open, close))
    }
}

fn walk_staff(member: &StaffMember, step: Nanos, bounds: &Bounds, busy: &[Span], out: &mut Vec<Nanos>) {
    let mut busy = BusyCursor::new(busy);
    let tz = &member.time_zone;
    let (Ok(earliest), Ok(last_instant)) = (
        Timestamp::from_nanosecond(bounds.earliest),
        Timestamp::from_nanosecond(bounds.horizon_end.min(bounds.window_end)),
    ) else {
        return;
    };
    // Every local date whose ranges can produce a start in [earliest, min(horizon, window end)),
    // with a day of margin for zones whose local date steps backwards at a transition.
    let first = tz.to_datetime(earliest).date();
    let mut date = first.yesterday().unwrap_or(first);
    let last = tz.to_datetime(last_instant).date();
    let Ok(midnight) = Offset::UTC.to_timestamp(date.to_datetime(Time::midnight())) else {
        return;
    };
    // `date`'s midnight as local nanos; advances one civil day per date.
    let mut midnight = midnight.as_nanosecond();
    let mut period = OffsetPeriod::containing(tz, earliest);
    let mut weekday = date.weekday();
    loop {
        let tomorrow = date.tomorrow();
        if !member.closed_dates.contains(&date) {
            for range in member.hours.on(weekday) {
                let Some((open, close)) = range.day_nanos() else {
                    continue;
                };
                let (open, close) = (midnight + open, midnight + close);
                if !period.contains(open - period.offset)
                    && let Some(guess) = timestamp(open - period.offset)
                {
                    period = OffsetPeriod::containing(tz, guess);
                }
                // `tomorrow` is only missing at the end of the calendar, where `on_date` has no
                // midnight-closing range either.
                match period.resolve(open, close) {
                    Some((open_at, close_at)) if tomorrow.is_ok() => {
                        walk_instants(open_at, close_at, step, bounds, &mut busy, out);
                    }
                    _ => {
                        if let Some((open, close)) = range.on_date(date) {
                            walk_range(tz, open, close, step, bounds, &mut busy, out);
                        }
                    }
                }
            }
        }
        if date >= last {
            break;
        }
        match tomorrow {
            Ok(next) => date = next,
            Err(_) => break,
        }
        midnight += DAY_NS;
        weekday = weekday.next();
    }
}

/// Candidates `open_at + k·step` before `close_at`, in absolute time: no zone transition in
/// between.
fn walk_instants(
    open_at: Nanos,
    close_at: Nanos,
    step: Nanos,
    bounds: &Bounds,
    busy: &mut BusyCursor<'_>,
    out: &mut Vec<Nanos>,
) {
    let mut start = open_at;
    while start < close_at {
        match bounds.check(start, close_at, busy) {
            ControlFlow::Break(()) => return,
            ControlFlow::Continue(true) => out.push(start),
            ControlFlow::Continue(false) => {}
        }
        start += step;
    }
}

/// The earliest instant that reads `dt` on the wall clock, or `None` in a gap.
fn resolve_start(tz: &TimeZone, dt: DateTime) -> Option<Timestamp> {
    let offset = match tz.to_ambiguous_timestamp(dt).offset() {
        AmbiguousOffset::Unambiguous { offset } => offset,
        AmbiguousOffset::Gap { .. } => return None,
        AmbiguousOffset::Fold { before, .. } => before,
    };
    offset.to_timestamp(dt).ok()
}

fn walk_range(
    tz: &TimeZone,
    open: DateTime,
    close: DateTime,
    step: Nanos,
    bounds: &Bounds,
    busy: &mut BusyCursor<'_>,
    out: &mut Vec<Nanos>,
) {
    let Ok(close_at) = tz.to_ambiguous_timestamp(close).compatible() else {
        return;
    };
    let close_at = close_at.as_nanosecond();
    // Fast path: the opening time is unambiguous and no transition happens before closing, so
    // every candidate is `open_at + k·step` in absolute time.
    if let AmbiguousOffset::Unambiguous { offset } = tz.to_ambiguous_timestamp(open).offset()
        && let (Ok(open_at), Ok(close_o)) = (offset.to_timestamp(open), offset.to_timestamp(close))
        && tz.following(open_at).next().is_none_or(|t| t.timestamp() > close_o)
    {
        let close_o = close_o.as_nanosecond();
        debug_assert_eq!(close_o, close_at);
        walk_instants(open_at.as_nanosecond(), close_o, step, bounds, busy, out);
        return;
    }
    // Slow path (a transition inside the range): resolve every local candidate.
    let step = SignedDuration::from_nanos_i128(step);
    let mut local = open;
    while local < close {
        if let Some(start) = resolve_start(tz, local) {
            match bounds.check(start.as_nanosecond(), close_at, busy) {
                ControlFlow::Break(()) => return,
                ControlFlow::Continue(true) => out.push(start.as_nanosecond()),
                ControlFlow::Continue(false) => {}
            }
        }
        local = match local.checked_add(step) {
            Ok(l) => l,
            Err(_) => return,
        };
    }
}

/// Local part of the day: morning before 12:00, afternoon 12:00–17:00, evening from 17:00.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartOfDay {
    Morning,
    Afternoon,
    Evening,
}

impl PartOfDay {
    pub fn of(time: Time) -> PartOfDay {
        match time.hour() {
            0..12 => PartOfDay::Morning,
            12..17 => PartOfDay::Afternoon,
            _ => PartOfDay::Evening,
        }
    }
}

/// What the caller asked for. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotPreference {
    /// Preferred local date (soft: other days fill in, nearest first).
    pub day: Option<Date>,
    /// Preferred part of the day (soft).
    pub part_of_day: Option<PartOfDay>,
    /// Hard filter: nothing starting before this.
    pub not_before: Option<Timestamp>,
}

/// Two offers on the same day are at least this far apart once every part of the day is used.
const MIN_SPREAD: SignedDuration = SignedDuration::from_mins(60);

struct Candidate {
    start: Timestamp,
    date: Date,
    part: PartOfDay,
    /// Slots with this start (positions in the sorted indices), one per staff member.
    options: std::ops::Range<usize>,
    /// Slots of the same local day (positions in the sorted indices).
    day: std::ops::Range<usize>,
}

/// Up to `count` slots to offer, at most one per start time, returned in chronological order.
///
/// Selection, deterministic for a given input:
/// 1. `not_before` filters; slots sharing a start collapse into one candidate.
/// 2. Candidates are tiered by how well they match the soft preferences (day and part both,
///    then day only, then part only, then neither). Tiers are exhausted in order.
/// 3. Within a tier, days are visited earliest first — or, with a preferred day, nearest to it
///    first (ties: the earlier day). A first pass takes up to two per day: the earliest slot,
///    then the earliest in a part of the day not yet offered that day, else the earliest at
///    least an hour from that day's other offers. A second pass repeats the same rule without
///    the per-day cap, a third takes whatever is left in order.
/// 4. When several staff can take a chosen start, the one with the fewest slots already picked
///    wins; ties go to the one with more free slots that local day (the less booked one), then
///    the smaller id.
///
/// Without preferences this reads like a receptionist: "9:00 or 14:00 tomorrow, or Thursday at
/// 9:00". `tz` is the zone the caller's "Tuesday" and "afternoon" are meant in.
pub fn pick_options(slots: &[Slot], count: usize, preference: &SlotPreference, tz: &TimeZone) -> Vec<Slot> {
    pick(&|i| SlotRef::from(&slots[i]), slots.len(), count, preference, tz)
}

/// [`pick_options`] over borrowed slots (see [`enumerate_slot_refs`]).
pub fn pick_options_from_refs(
    slots: &[SlotRef<'_>],
    count: usize,
    preference: &SlotPreference,
    tz: &TimeZone,
) -> Vec<Slot> {
    pick(&|i| slots[i], slots.len(), count, preference, tz)
}

/// `at(i)` is slot `i` of the caller's list, whichever representation it uses (generic rather
/// than `dyn`: it is called for every slot several times, and inlined that is a plain load).
fn pick<'a, F: Fn(usize) -> SlotRef<'a>>(
    at: &F,
    len: usize,
    count: usize,
    preference: &SlotPreference,
    tz: &TimeZone,
) -> Vec<Slot> {
    if count == 0 {
        return Vec::new();
    }
    // Indices in start order; usually already so (straight from the engine). The order of
    // staff within a start does not matter: the staff choice below is order-independent.
    let mut sorted: Vec<usize> =
        (0..len).filter(|&i| preference.not_before.is_none_or(|nb| at(i).start >= nb)).collect();
    if !sorted.is_sorted_by_key(|&i| at(i).start) {
        sorted.sort_by_key(|&i| at(i).start);
    }
    let mut cands: Vec<Candidate> = Vec::new();
    let mut period = None;
    for (i, s) in sorted.iter().map(|&i| at(i)).enumerate() {
        match cands.last_mut() {
            Some(c) if c.start == s.start => c.options.end = i + 1,
            _ => {
                let local = OffsetPeriod::to_datetime(&mut period, tz, s.start);
                cands.push(Candidate {
                    start: s.start,
                    date: local.date(),
                    part: PartOfDay::of(local.time()),
                    options: i..i + 1,
                    day: i..i + 1,
                });
            }
        }
    }
    // Each candidate learns the slots of its (contiguous) local day, for the staff tie-break.
    let mut lo = 0;
    while lo < cands.len() {
        let hi = lo + cands[lo..].iter().take_while(|c| c.date == cands[lo].date).count();
        let day = cands[lo].options.start..cands[hi - 1].options.end;
        for c in &mut cands[lo..hi] {
            c.day = day.clone();
        }
        lo = hi;
    }

    let tier = |c: &Candidate| -> u8 {
        let day = preference.day.map(|d| c.date == d);
        let part = preference.part_of_day.map(|p| c.part == p);
        match (day, part) {
            (Some(true), Some(true)) => 0,
            (Some(true), Some(false)) => 1,
            (Some(false), Some(true)) => 2,
            (Some(false), Some(false)) => 3,
            (Some(true), None) | (None, Some(true)) | (None, None) => 0,
            (Some(false), None) | (None, Some(false)) => 1,
        }
    };
    let day_distance = |d: Date| -> i64 { preference.day.map_or(0, |p| (d.duration_since(p).as_hours() / 24).abs()) };
    let mut keyed: Vec<((u8, i64, Date, Timestamp), usize)> =
        cands.iter().enumerate().map(|(i, c)| ((tier(c), day_distance(c.date), c.date, c.start), i)).collect();
    keyed.sort_unstable();
    let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();

    let mut picker = Picker {
        at,
        sorted: &sorted,
        cands: &cands,
        picked: vec![false; cands.len()],
        per_day: HashMap::new(),
        load: HashMap::new(),
        out: Vec::new(),
        count,
    };
    let mut rest = &order[..];
    while !rest.is_empty() && picker.out.len() < count {
        let t = tier(&cands[rest[0]]);
        let len = rest.iter().take_while(|&&i| tier(&cands[i]) == t).count();
        let (this_tier, next) = rest.split_at(len);
        rest = next;
        // Day groups are contiguous in `order`.
        let days: Vec<&[usize]> = this_tier.chunk_by(|&a, &b| cands[a].date == cands[b].date).collect();
        for group in &days {
            while picker.room() && picker.picks_on(cands[group[0]].date) < 2 {
                let Some(i) = picker.next_diverse(group) else {
                    break;
                };
                picker.pick(i);
            }
        }
        for group in &days {
            while picker.room() {
                let Some(i) = picker.next_diverse(group) else {
                    break;
                };
                picker.pick(i);
            }
        }
        for group in &days {
            for &i in group.iter() {
                if picker.room() && !picker.picked[i] {
                    picker.pick(i);
                }
            }
        }
    }
    let mut out = picker.out;
    out.sort_by(|a, b| (a.start, &a.staff_id).cmp(&(b.start, &b.staff_id)));
    out
}

struct Picker<'s, 'a, F> {
    at: &'s F,
    /// Indices for `at`, in start order; candidates' `options` and `day` index into this.
    sorted: &'s [usize],
    cands: &'s [Candidate],
    picked: Vec<bool>,
    per_day: HashMap<Date, Vec<usize>>,
    load: HashMap<&'a str, usize>,
    out: Vec<Slot>,
    count: usize,
}

impl<'a, F: Fn(usize) -> SlotRef<'a>> Picker<'_, 'a, F> {
    fn room(&self) -> bool {
        self.out.len() < self.count
    }

    fn picks_on(&self, date: Date) -> usize {
        self.per_day.get(&date).map_or(0, Vec::len)
    }

    /// The earliest unpicked candidate of a day group that adds variety to that day's offers.
    fn next_diverse(&self, group: &[usize]) -> Option<usize> {
        let day = self.per_day.get(&self.cands[group[0]].date).map_or(&[][..], Vec::as_slice);
        let mut unpicked = group.iter().copied().filter(|&i| !self.picked[i]);
        if day.is_empty() {
            return unpicked.next();
        }
        let cands = self.cands;
        let new_part = unpicked.clone().find(|&i| day.iter().all(|&p| cands[p].part != cands[i].part));
        new_part.or_else(|| {
            unpicked.find(|&i| day.iter().all(|&p| cands[i].start.duration_since(cands[p].start).abs() >= MIN_SPREAD))
        })
    }

    fn pick(&mut self, i: usize) {
        let c = &self.cands[i];
        let at = self.at;
        let options: Vec<SlotRef<'a>> = self.sorted[c.options.clone()].iter().map(|&j| at(j)).collect();
        let load = |s: &SlotRef<'a>| self.load.get(s.staff_id).copied().unwrap_or(0);
        let least = options.iter().map(load).min().expect("a candidate has at least one slot");
        let tied = options.iter().filter(|s| load(s) == least);
        let slot: SlotRef<'a> = if tied.clone().count() == 1 {
            *tied.clone().next().expect("one")
        } else {
            // Free slots that day: the less booked staff member takes it.
            let free_that_day =
                |id: &str| self.sorted[c.day.clone()].iter().filter(|&&j| same_id(at(j).staff_id, id)).count();
            *tied.min_by_key(|s| (Reverse(free_that_day(s.staff_id)), s.staff_id)).expect("tied is not empty")
        };
        self.picked[i] = true;
        self.per_day.entry(c.date).or_default().push(i);
        *self.load.entry(slot.staff_id).or_default() += 1;
        self.out.push(slot.to_slot());
    }
}

/// String equality with a pointer fast path: slots from [`enumerate_slot_refs`] share the
/// staff member's id string.
fn same_id(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// The outcome of [`resolve_service`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceMatch<'a> {
    Found(&'a ServiceType),
    /// Several services fit equally well, best first; ask the caller which one.
    Ambiguous(Vec<&'a ServiceType>),
    NotFound,
}

/// Fuzzy matches below this similarity are ignored.
const FUZZY_MIN: f64 = 0.75;
/// Fuzzy matches within this much of the best one make the answer ambiguous.
const FUZZY_MARGIN: f64 = 0.1;

/// Maps what the caller said to a service. Names are the service's id, name and synonyms,
/// compared after [`normalize_name`] (case, accents, punctuation). Stages, first hit wins:
/// 1. exact name match;
/// 2. the utterance contains a whole name ("a teeth cleaning please"); the services whose
///    longest contained name has the most words win;
/// 3. every spoken word is a word of a name, or a prefix (4+ characters) of one ("consult" →
///    "initial consultation");
/// 4. [`similarity`] of the whole utterance to a name, at least [`FUZZY_MIN`]; services within
///    [`FUZZY_MARGIN`] of the best are ambiguous.
///
/// A stage that finds one service answers `Found`, several `Ambiguous` (config order, except
/// stage 4: best first).
pub fn resolve_service<'a>(services: &'a [ServiceType], spoken: &str) -> ServiceMatch<'a> {
    let query = normalize_name(spoken);
    if query.is_empty() {
        return ServiceMatch::NotFound;
    }
    let names: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            std::iter::once(&s.id)
                .chain(std::iter::once(&s.name))
                .chain(s.synonyms.iter())
                .map(|n| normalize_name(n))
                .filter(|n| !n.is_empty())
                .collect()
        })
        .collect();
    let collect = |keep: &dyn Fn(&[String]) -> bool| -> Vec<&'a ServiceType> {
        services.iter().zip(&names).filter(|(_, n)| keep(n)).map(|(s, _)| s).collect()
    };
    let answer = |found: Vec<&'a ServiceType>| match found.len() {
        0 => ServiceMatch::NotFound,
        1 => ServiceMatch::Found(found[0]),
        _ => ServiceMatch::Ambiguous(found),
    };

    // 1. Exact.
    let exact = collect(&|n| n.contains(&query));
    if !exact.is_empty() {
        return answer(exact);
    }

    let q_words: Vec<&str> = query.split(' ').collect();
    // 2. The utterance contains a whole name.
    let contained = |n: &[String]| -> usize {
        n.iter()
            .map(|n| n.split(' ').collect::<Vec<_>>())
            .filter(|w| q_words.windows(w.len()).any(|win| win == w.as_slice()))
            .map(|w| w.len())
            .max()
            .unwrap_or(0)
    };
    let best = names.iter().map(|n| contained(n)).max().unwrap_or(0);
    if best > 0 {
        return answer(collect(&|n| contained(n) == best));
    }

    // 3. Every spoken word belongs to a name (or starts one of its words).
    let partial = collect(&|n| {
        n.iter().any(|n| {
            q_words.iter().all(|q| n.split(' ').any(|w| w == *q || (q.chars().count() >= 4 && w.starts_with(q))))
        })
    });
    if !partial.is_empty() {
        return answer(partial);
    }

    // 4. Fuzzy.
    let mut scored: Vec<(f64, &'a ServiceType)> = services
        .iter()
        .zip(&names)
        .map(|(s, n)| (n.iter().map(|n| similarity(&query, n)).fold(0.0, f64::max), s))
        .filter(|(score, _)| *score >= FUZZY_MIN)
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let Some(&(top, _)) = scored.first() else {
        return ServiceMatch::NotFound;
    };
    answer(scored.into_iter().take_while(|(s, _)| *s >= top - FUZZY_MARGIN).map(|(_, s)| s).collect())
}

/// Similarity of two normalized names in `[0, 1]`, 1 meaning equal: normalized Levenshtein,
/// `1 - distance / max(len)` over chars (normalized Levenshtein): robust to the one-letter slips
/// of speech-to-text ("haircut" / "hair cut" / "harcut").
pub fn similarity(a: &str, b: &str) -> f64 {
    strsim::normalized_levenshtein(a, b)
}

/// Lowercases, folds Latin accents ("Épilation" → "epilation", also decomposed input), drops
/// apostrophes ("women's" → "womens"), turns other punctuation into spaces and collapses runs of
/// whitespace.
pub fn normalize_name(s: &str) -> String {
    let mut folded = String::with_capacity(s.len());
    for c in s.chars().flat_map(char::to_lowercase) {
        fold_char(c, &mut folded);
    }
    let mut out = String::with_capacity(folded.len());
    for word in folded.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

fn fold_char(c: char, out: &mut String) {
    let folded = match c {
        '\'' | '\u{2019}' | '\u{2018}' | '`' | '\u{b4}' => "",
        // Combining diacritical marks (decomposed input).
        '\u{300}'..='\u{36f}' => "",
        'à'..='å' | 'ā' | 'ă' | 'ą' => "a",
        'æ' => "ae",
        'ç' | 'ć' | 'ĉ' | 'ċ' | 'č' => "c",
        'ď' | 'đ' | 'ð' => "d",
        'è'..='ë' | 'ē' | 'ĕ' | 'ė' | 'ę' | 'ě' => "e",
        'ĝ' | 'ğ' | 'ġ' | 'ģ' => "g",
        'ĥ' | 'ħ' => "h",
        'ì'..='ï' | 'ĩ' | 'ī' | 'ĭ' | 'į' | 'ı' => "i",
        'ĵ' => "j",
        'ķ' => "k",
        'ĺ' | 'ļ' | 'ľ' | 'ŀ' | 'ł' => "l",
        'ñ' | 'ń' | 'ņ' | 'ň' => "n",
        'ò'..='ö' | 'ø' | 'ō' | 'ŏ' | 'ő' => "o",
        'œ' => "oe",
        'ŕ' | 'ŗ' | 'ř' => "r",
        'ś' | 'ŝ' | 'ş' | 'š' => "s",
        'ß' => "ss",
        'ţ' | 'ť' | 'ŧ' => "t",
        'þ' => "th",
        'ù'..='ü' | 'ũ' | 'ū' | 'ŭ' | 'ů' | 'ű' | 'ų' => "u",
        'ŵ' => "w",
        'ý' | 'ÿ' | 'ŷ' => "y",
        'ź' | 'ż' | 'ž' => "z",
        _ => {
            out.push(c);
            return;
        }
    };
    out.push_str(folded);
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn zone(name: &str) -> TimeZone {
        TimeZone::get(name).unwrap()
    }

    fn hm(h: i8, m: i8) -> Time {
        Time::constant(h, m, 0, 0)
    }

    fn range(open: (i8, i8), close: (i8, i8)) -> OpeningHours {
        OpeningHours { open: hm(open.0, open.1), close: hm(close.0, close.1) }
    }

    fn member(id: &str, tz: &str, ranges: Vec<OpeningHours>) -> StaffMember {
        StaffMember {
            id: id.into(),
            name: id.to_uppercase(),
            time_zone: zone(tz),
            hours: WeeklyHours::every_day(ranges),
            calendar_ids: vec![format!("{id}@example.com")],
            closed_dates: vec![],
        }
    }

    fn service(duration: u32, before: u32, after: u32) -> ServiceType {
        ServiceType {
            id: "consult".into(),
            name: "Consultation".into(),
            duration_minutes: duration,
            buffer_before_minutes: before,
            buffer_after_minutes: after,
            synonyms: vec![],
            staff_ids: vec![],
        }
    }

    fn rules(interval: u32) -> ScheduleRules {
        ScheduleRules { slot_interval_minutes: interval, min_notice_minutes: 0, horizon_days: 60 }
    }

    fn iv(a: &str, b: &str) -> Interval {
        Interval::new(ts(a), ts(b))
    }

    fn busy(staff: &str, a: &str, b: &str) -> Busy {
        Busy { staff_id: staff.into(), interval: iv(a, b) }
    }

    /// Slot starts as local "HH:MM" in `tz`.
    fn local_times(slots: &[Slot], tz: &str) -> Vec<String> {
        let tz = zone(tz);
        slots.iter().map(|s| tz.to_datetime(s.start).strftime("%H:%M").to_string()).collect()
    }

    fn utc_starts(slots: &[Slot]) -> Vec<String> {
        slots.iter().map(|s| s.start.strftime("%H:%MZ").to_string()).collect()
    }

    /// Tuesday 2026-06-02 in New York (EDT, -04): the whole local day.
    const NY_DAY: (&str, &str) = ("2026-06-02T04:00:00Z", "2026-06-03T04:00:00Z");
    const NY_NOW: &str = "2026-06-01T00:00:00Z";

    fn ny_day() -> Interval {
        iv(NY_DAY.0, NY_DAY.1)
    }

    #[test]
    fn weekly_hours_index_monday_first() {
        let mut days: [Vec<OpeningHours>; 7] = Default::default();
        days[0].push(range((9, 0), (17, 0)));
        days[6].push(range((10, 0), (14, 0)));
        let h = WeeklyHours::new(days);
        assert_eq!(h.on(Weekday::Monday), &[range((9, 0), (17, 0))]);
        assert_eq!(h.on(Weekday::Sunday), &[range((10, 0), (14, 0))]);
        assert!(h.on(Weekday::Wednesday).is_empty());
        assert_eq!(Date::constant(2026, 6, 2).weekday(), Weekday::Tuesday);
    }

    #[test]
    fn weekly_hours_deserialize_from_named_days() {
        let h: WeeklyHours =
            serde_json::from_str(r#"{"monday":[{"open":"09:00","close":"12:00"}],"friday":[]}"#).unwrap();
        assert_eq!(h.on(Weekday::Monday), &[range((9, 0), (12, 0))]);
        assert!(h.on(Weekday::Tuesday).is_empty());
    }

    #[test]
    fn blocked_interval_adds_buffers() {
        let b = blocked_interval(&service(30, 10, 5), ts("2026-06-02T13:00:00Z"));
        assert_eq!(b, iv("2026-06-02T12:50:00Z", "2026-06-02T13:35:00Z"));
    }

    #[test]
    fn ordinary_day_slots_are_aligned_to_opening_and_fit_before_close() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0))])];
        let slots = enumerate_slots(&rules(30), &staff, &service(30, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:00", "09:30", "10:00", "10:30", "11:00", "11:30"]);
        assert_eq!(slots[0].start, ts("2026-06-02T13:00:00Z"));
        assert_eq!(slots[0].end, ts("2026-06-02T13:30:00Z"));
        assert!(slots.iter().all(|s| s.staff_id == "ann"));

        // Longer than the interval: the last start still ends by closing time.
        let slots = enumerate_slots(&rules(15), &staff, &service(45, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York").last().unwrap(), "11:15");
        assert_eq!(slots.len(), 10);

        // Alignment follows the opening time, not the clock's quarter hours.
        let staff = [member("ann", "America/New_York", vec![range((9, 10), (11, 0))])];
        let slots = enumerate_slots(&rules(30), &staff, &service(30, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:10", "09:40", "10:10"]);

        // Interval 0 means back to back.
        let slots = enumerate_slots(&rules(0), &staff, &service(50, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:10", "10:00"]);
    }

    #[test]
    fn lunch_break_splits_the_day() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0)), range((13, 0), (17, 0))])];
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(
            local_times(&slots, "America/New_York"),
            ["09:00", "10:00", "11:00", "13:00", "14:00", "15:00", "16:00"]
        );
        // A 90-minute service does not straddle lunch.
        let slots = enumerate_slots(&rules(30), &staff, &service(90, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert!(!local_times(&slots, "America/New_York").contains(&"11:00".to_string()));
        assert!(local_times(&slots, "America/New_York").contains(&"10:30".to_string()));
    }

    #[test]
    fn overlapping_ranges_and_midnight_close() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (11, 0)), range((10, 0), (12, 0))])];
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:00", "10:00", "11:00"]);

        let staff = [member("ann", "America/New_York", vec![range((22, 0), (0, 0))])];
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["22:00", "23:00"]);
        // close < open (not midnight) is empty; zero duration yields nothing.
        let staff = [member("ann", "America/New_York", vec![range((17, 0), (9, 0))])];
        assert!(enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], ny_day(), ts(NY_NOW)).is_empty());
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (17, 0))])];
        assert!(enumerate_slots(&rules(60), &staff, &service(0, 0, 0), &[], ny_day(), ts(NY_NOW)).is_empty());
    }

    #[test]
    fn min_notice_is_inclusive() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0))])];
        let mut r = rules(30);
        r.min_notice_minutes = 60;
        // now 08:00 local: 09:00 is exactly one hour away and allowed.
        let slots = enumerate_slots(&r, &staff, &service(30, 0, 0), &[], ny_day(), ts("2026-06-02T12:00:00Z"));
        assert_eq!(local_times(&slots, "America/New_York")[0], "09:00");
        // now 08:50 local: the first start at least an hour away is 10:00.
        let slots = enumerate_slots(&r, &staff, &service(30, 0, 0), &[], ny_day(), ts("2026-06-02T12:50:00Z"));
        assert_eq!(local_times(&slots, "America/New_York")[0], "10:00");
    }

    #[test]
    fn horizon_is_exclusive_and_absolute() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (10, 0))])];
        let mut r = rules(60);
        r.horizon_days = 1;
        let window = iv("2026-06-02T04:00:00Z", "2026-06-05T04:00:00Z");
        // now = Tuesday 09:00 local: Wednesday 09:00 is exactly 24 h away, outside the horizon.
        let slots = enumerate_slots(&r, &staff, &service(60, 0, 0), &[], window, ts("2026-06-02T13:00:00Z"));
        assert_eq!(utc_starts(&slots), ["13:00Z"]);
        assert_eq!(slots[0].start, ts("2026-06-02T13:00:00Z"));
        let slots = enumerate_slots(&r, &staff, &service(60, 0, 0), &[], window, ts("2026-06-02T13:01:00Z"));
        assert_eq!(slots.iter().map(|s| s.start).collect::<Vec<_>>(), [ts("2026-06-03T13:00:00Z")]);
        r.horizon_days = 0;
        assert!(enumerate_slots(&r, &staff, &service(60, 0, 0), &[], window, ts(NY_NOW)).is_empty());
    }

    #[test]
    fn slots_must_lie_inside_the_window() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0))])];
        let window = iv("2026-06-02T13:30:00Z", "2026-06-02T14:30:00Z");
        let slots = enumerate_slots(&rules(30), &staff, &service(60, 0, 0), &[], window, ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:30"]);
        let empty = iv("2026-06-02T13:30:00Z", "2026-06-02T13:30:00Z");
        assert!(enumerate_slots(&rules(30), &staff, &service(60, 0, 0), &[], empty, ts(NY_NOW)).is_empty());
    }

    #[test]
    fn busy_overlap_is_half_open() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0))])];
        // Busy 10:00–11:00 local.
        let b = [busy("ann", "2026-06-02T14:00:00Z", "2026-06-02T15:00:00Z")];
        let slots = enumerate_slots(&rules(30), &staff, &service(30, 0, 0), &b, ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:00", "09:30", "11:00", "11:30"]);
        // A zero-length busy interval strictly inside a slot blocks it (Interval::overlaps);
        // one on a slot boundary does not.
        let b = [
            busy("ann", "2026-06-02T13:10:00Z", "2026-06-02T13:10:00Z"),
            busy("ann", "2026-06-02T14:00:00Z", "2026-06-02T14:00:00Z"),
        ];
        let slots = enumerate_slots(&rules(30), &staff, &service(30, 0, 0), &b, ny_day(), ts(NY_NOW));
        assert_eq!(local_times(&slots, "America/New_York"), ["09:30", "10:00", "10:30", "11:00", "11:30"]);
    }

    #[test]
    fn buffers_guard_busy_time_but_may_leave_opening_hours() {
        let staff = [member("ann", "America/New_York", vec![range((9, 0), (12, 0))])];
        // Busy 10:00–10:30 local; 30-minute service with 15 minutes each side.
        let b = [busy("ann", "2026-06-02T14:00:00Z", "2026-06-02T14:30:00Z")];
        let slots = enumerate_slots(&rules(15), &staff, &service(30, 15, 15), &b, ny_day(), ts(NY_NOW));
        let times = local_times(&slots, "America/New_York");
        // 09:00 is offered although its prep buffer starts at 08:45, before opening.
        assert_eq!(times[0], "09:00");
        assert!(times.contains(&"09:15".to_string()), "blocked [09:00, 10:00) touches busy: fine");
        for taken in ["09:30", "09:45", "10:00", "10:15", "10:30"] {
            assert!(!times.contains(&taken.to_string()), "{taken} overlaps busy with buffers");
        }
        assert!(times.contains(&"10:45".to_string()), "blocked [10:30, 11:30) touches busy: fine");
        // 11:30 is offered although its clean-up buffer runs past closing.
        assert_eq!(times.last().unwrap(), "11:30");
    }

    #[test]
    fn closed_dates_are_skipped() {
        let mut ann = member("ann", "America/New_York", vec![range((9, 0), (10, 0))]);
        ann.closed_dates = vec![Date::constant(2026, 6, 3)];
        let window = iv("2026-06-02T04:00:00Z", "2026-06-05T04:00:00Z");
        let slots = enumerate_slots(&rules(60), &[ann], &service(60, 0, 0), &[], window, ts(NY_NOW));
        let dates: Vec<String> = slots.iter().map(|s| s.start.strftime("%m-%d").to_string()).collect();
        assert_eq!(dates, ["06-02", "06-04"]);
    }

    #[test]
    fn multi_staff_is_sorted_filtered_and_isolated() {
        let staff = [
            member("zoe", "America/New_York", vec![range((9, 0), (11, 0))]),
            member("ann", "America/New_York", vec![range((9, 0), (11, 0))]),
            // Same local hours in Chicago: one hour later in absolute time.
            member("bob", "America/Chicago", vec![range((9, 0), (11, 0))]),
        ];
        let b = [busy("ann", "2026-06-02T13:00:00Z", "2026-06-02T14:00:00Z")];
        let window = iv("2026-06-02T04:00:00Z", "2026-06-03T04:00:00Z");
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &b, window, ts(NY_NOW));
        let got: Vec<(String, String)> =
            slots.iter().map(|s| (s.start.strftime("%H:%M").to_string(), s.staff_id.clone())).collect();
        let want = [("13:00", "zoe"), ("14:00", "ann"), ("14:00", "bob"), ("14:00", "zoe"), ("15:00", "bob")];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));

        let mut only_bob = service(60, 0, 0);
        only_bob.staff_ids = vec!["bob".into()];
        let slots = enumerate_slots(&rules(60), &staff, &only_bob, &b, window, ts(NY_NOW));
        assert!(slots.iter().all(|s| s.staff_id == "bob"));
        assert_eq!(slots.len(), 2);
    }

    #[test]
    fn duplicate_staff_entries_do_not_duplicate_slots() {
        let staff = [
            member("ann", "America/New_York", vec![range((9, 0), (10, 0))]),
            member("ann", "America/New_York", vec![range((9, 0), (10, 0))]),
        ];
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], ny_day(), ts(NY_NOW));
        assert_eq!(slots.len(), 1);
    }

    // ---- DST ----

    /// Slots of one staff member in `tz` open from 00:00 to `close` every day.
    fn small_hours(tz: &str, window: Interval, duration: u32, interval: u32, close: (i8, i8)) -> Vec<Slot> {
        let staff = [member("ann", tz, vec![range((0, 0), close)])];
        let now = window.start - SignedDuration::from_hours(24);
        enumerate_slots(&rules(interval), &staff, &service(duration, 0, 0), &[], window, now)
    }

    #[test]
    fn new_york_spring_forward_skipped_hour_has_no_slots() {
        // 2026-03-08: 02:00 EST jumps to 03:00 EDT (07:00Z).
        let day = iv("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z");
        let slots = small_hours("America/New_York", day, 30, 30, (4, 0));
        assert_eq!(local_times(&slots, "America/New_York"), ["00:00", "00:30", "01:00", "01:30", "03:00", "03:30"]);
        assert_eq!(utc_starts(&slots), ["05:00Z", "05:30Z", "06:00Z", "06:30Z", "07:00Z", "07:30Z"]);
        // The 01:30 EST slot ends at 03:00 EDT: duration is absolute.
        assert_eq!(slots[3].end, ts("2026-03-08T07:00:00Z"));

        // 60-minute service: 01:30 EST runs to 03:30 EDT, still before 04:00.
        let slots = small_hours("America/New_York", day, 60, 30, (4, 0));
        assert_eq!(local_times(&slots, "America/New_York"), ["00:00", "00:30", "01:00", "01:30", "03:00"]);
        // Closing is checked in absolute time: 01:00 EST + 2 h = 04:00 EDT, past a 03:30 close,
        // although on the wall clock 01:00 + 2 h reads 03:00.
        let slots = small_hours("America/New_York", day, 120, 60, (3, 30));
        assert_eq!(local_times(&slots, "America/New_York"), ["00:00"]);
    }

    #[test]
    fn new_york_fall_back_repeated_hour_yields_one_slot() {
        // 2026-11-01: 02:00 EDT falls back to 01:00 EST (06:00Z); 01:00–01:59 happens twice.
        let day = iv("2026-11-01T04:00:00Z", "2026-11-02T05:00:00Z");
        let slots = small_hours("America/New_York", day, 30, 30, (4, 0));
        assert_eq!(
            local_times(&slots, "America/New_York"),
            ["00:00", "00:30", "01:00", "01:30", "02:00", "02:30", "03:00", "03:30"]
        );
        // The repeated 01:00 and 01:30 are offered once, at the earlier (EDT) occurrence.
        assert_eq!(
            utc_starts(&slots),
            ["04:00Z", "04:30Z", "05:00Z", "05:30Z", "07:00Z", "07:30Z", "08:00Z", "08:30Z"]
        );
        assert_eq!(slots[3].end, ts("2026-11-01T06:00:00Z"));
        // A 90-minute service at 01:00 EDT ends at 01:30 EST, well before 04:00.
        let slots = small_hours("America/New_York", day, 90, 60, (4, 0));
        assert_eq!(utc_starts(&slots), ["04:00Z", "05:00Z", "07:00Z"]);
    }

    /// Nine-to-five every day for three days around `date`: each day's first slot is 09:00 local.
    fn assert_nine_local(tz: &str, window: Interval, expected_utc: [&str; 3]) {
        let staff = [member("ann", tz, vec![range((9, 0), (17, 0))])];
        let now = window.start - SignedDuration::from_hours(24);
        let slots = enumerate_slots(&rules(60), &staff, &service(60, 0, 0), &[], window, now);
        assert_eq!(slots.len(), 24, "{tz}: 8 hourly slots a day");
        let firsts: Vec<Timestamp> = slots.chunks(8).map(|c| c[0].start).collect();
        assert_eq!(firsts, expected_utc.map(ts));
        assert!(local_times(&slots, tz).chunks(8).all(|c| c[0] == "09:00" && c[7] == "16:00"));
    }

    #[test]
    fn nine_am_stays_nine_am_across_dst_changes() {
        assert_nine_local(
            "America/New_York",
            iv("2026-03-07T05:00:00Z", "2026-03-10T04:00:00Z"),
            ["2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z", "2026-03-09T13:00:00Z"],
        );
        assert_nine_local(
            "America/New_York",
            iv("2026-10-31T04:00:00Z", "2026-11-03T05:00:00Z"),
            ["2026-10-31T13:00:00Z", "2026-11-01T14:00:00Z", "2026-11-02T14:00:00Z"],
        );
        assert_nine_local(
            "Europe/London",
            iv("2026-03-28T00:00:00Z", "2026-03-30T23:00:00Z"),
            ["2026-03-28T09:00:00Z", "2026-03-29T08:00:00Z", "2026-03-30T08:00:00Z"],
        );
    }

    #[test]
    fn london_spring_forward_skipped_hour_has_no_slots() {
        // 2026-03-29: 01:00 GMT jumps to 02:00 BST.
        let day = iv("2026-03-29T00:00:00Z", "2026-03-29T23:00:00Z");
        let slots = small_hours("Europe/London", day, 30, 30, (4, 0));
        assert_eq!(local_times(&slots, "Europe/London"), ["00:00", "00:30", "02:00", "02:30", "03:00", "03:30"]);
        assert_eq!(utc_starts(&slots), ["00:00Z", "00:30Z", "01:00Z", "01:30Z", "02:00Z", "02:30Z"]);
    }

    #[test]
    fn london_fall_back_repeated_hour_yields_one_slot() {
        // 2026-10-25: 02:00 BST falls back to 01:00 GMT.
        let day = iv("2026-10-24T23:00:00Z", "2026-10-26T00:00:00Z");
        let slots = small_hours("Europe/London", day, 60, 60, (4, 0));
        assert_eq!(local_times(&slots, "Europe/London"), ["00:00", "01:00", "02:00", "03:00"]);
        assert_eq!(utc_starts(&slots), ["23:00Z", "00:00Z", "02:00Z", "03:00Z"]);
    }

    #[test]
    fn preference_types_serialize_plainly() {
        assert_eq!(serde_json::to_string(&PartOfDay::Afternoon).unwrap(), r#""afternoon""#);
    }

    // ---- pick_options ----

    fn slot(staff: &str, start: &str, minutes_long: i64) -> Slot {
        let start = ts(start);
        Slot { staff_id: staff.into(), start, end: start + SignedDuration::from_mins(minutes_long) }
    }

    /// New York, June: Tuesday morning and afternoon, Wednesday morning.
    fn menu() -> Vec<Slot> {
        [
            "2026-06-02T13:00:00Z", // Tue 09:00
            "2026-06-02T13:30:00Z", // Tue 09:30
            "2026-06-02T14:00:00Z", // Tue 10:00
            "2026-06-02T18:00:00Z", // Tue 14:00
            "2026-06-02T19:00:00Z", // Tue 15:00
            "2026-06-02T22:00:00Z", // Tue 18:00
            "2026-06-03T13:00:00Z", // Wed 09:00
            "2026-06-03T18:00:00Z", // Wed 14:00
            "2026-06-04T17:00:00Z", // Thu 13:00
            "2026-06-04T19:00:00Z", // Thu 15:00
        ]
        .iter()
        .map(|s| slot("ann", s, 30))
        .collect()
    }

    fn picked_local(p: &[Slot]) -> Vec<String> {
        let tz = zone("America/New_York");
        p.iter().map(|s| tz.to_datetime(s.start).strftime("%a %H:%M").to_string()).collect()
    }

    #[test]
    fn pick_without_preference_mixes_parts_then_next_day() {
        let tz = zone("America/New_York");
        let p = pick_options(&menu(), 3, &SlotPreference::default(), &tz);
        assert_eq!(picked_local(&p), ["Tue 09:00", "Tue 14:00", "Wed 09:00"]);
        let p = pick_options(&menu(), 0, &SlotPreference::default(), &tz);
        assert!(p.is_empty());
        assert!(pick_options(&[], 3, &SlotPreference::default(), &tz).is_empty());
    }

    #[test]
    fn pick_prefers_the_requested_day_spread_over_parts() {
        let tz = zone("America/New_York");
        let pref = SlotPreference { day: Some(Date::constant(2026, 6, 2)), ..Default::default() };
        let p = pick_options(&menu(), 3, &pref, &tz);
        assert_eq!(picked_local(&p), ["Tue 09:00", "Tue 14:00", "Tue 18:00"]);
        // Wednesday has two slots; the third comes from the nearest other day (Tuesday first).
        let pref = SlotPreference { day: Some(Date::constant(2026, 6, 3)), ..Default::default() };
        let p = pick_options(&menu(), 3, &pref, &tz);
        assert_eq!(picked_local(&p), ["Tue 09:00", "Wed 09:00", "Wed 14:00"]);
    }

    #[test]
    fn pick_prefers_the_requested_part_of_day() {
        let tz = zone("America/New_York");
        let pref = SlotPreference { part_of_day: Some(PartOfDay::Afternoon), ..Default::default() };
        let p = pick_options(&menu(), 3, &pref, &tz);
        assert_eq!(picked_local(&p), ["Tue 14:00", "Tue 15:00", "Wed 14:00"]);
        let pref = SlotPreference {
            day: Some(Date::constant(2026, 6, 3)),
            part_of_day: Some(PartOfDay::Afternoon),
            not_before: None,
        };
        let p = pick_options(&menu(), 3, &pref, &tz);
        // Wednesday afternoon, then Wednesday otherwise, then the nearest afternoon elsewhere.
        assert_eq!(picked_local(&p), ["Tue 14:00", "Wed 09:00", "Wed 14:00"]);
    }

    #[test]
    fn pick_honours_not_before_and_spreads_within_a_part() {
        let tz = zone("America/New_York");
        let pref = SlotPreference { not_before: Some(ts("2026-06-02T19:00:00Z")), ..Default::default() };
        let p = pick_options(&menu(), 3, &pref, &tz);
        assert_eq!(picked_local(&p), ["Tue 15:00", "Tue 18:00", "Wed 09:00"]);
        let mornings: Vec<Slot> = (0..8)
            .map(|i| {
                slot(
                    "ann",
                    &format!("2026-06-02T{:02}:00:00Z", 12 + i / 2)
                        .replace(":00:00Z", if i % 2 == 0 { ":00:00Z" } else { ":30:00Z" }),
                    30,
                )
            })
            .collect();
        // Tuesday 08:00, 08:30, … 11:30 local: first pass picks 08:00 then the first start an
        // hour later.
        let p = pick_options(&mornings[..], 2, &SlotPreference::default(), &tz);
        assert_eq!(picked_local(&p), ["Tue 08:00", "Tue 09:00"]);
    }

    #[test]
    fn pick_balances_staff_and_never_repeats_a_start() {
        let tz = zone("America/New_York");
        let mut slots = Vec::new();
        for start in ["2026-06-02T13:00:00Z", "2026-06-02T18:00:00Z", "2026-06-03T13:00:00Z"] {
            slots.push(slot("ann", start, 30));
            slots.push(slot("bob", start, 30));
        }
        // bob is freer on both days: he takes the first pick, ann the second (she has fewer
        // picks), and bob the third (equal picks, more free time that day).
        slots.push(slot("bob", "2026-06-02T14:30:00Z", 30));
        slots.push(slot("bob", "2026-06-03T14:30:00Z", 30));
        slots.push(slot("bob", "2026-06-03T14:30:00Z", 30));
        let p = pick_options(&slots, 3, &SlotPreference::default(), &tz);
        assert_eq!(picked_local(&p), ["Tue 09:00", "Tue 14:00", "Wed 09:00"]);
        assert_eq!(p.iter().map(|s| s.staff_id.as_str()).collect::<Vec<_>>(), ["bob", "ann", "bob"]);
        let p = pick_options(&slots, 10, &SlotPreference::default(), &tz);
        assert_eq!(p.len(), 5, "one slot per distinct start");
    }

    // ---- resolve_service ----

    fn services() -> Vec<ServiceType> {
        let mk = |id: &str, name: &str, synonyms: &[&str]| ServiceType {
            id: id.into(),
            name: name.into(),
            duration_minutes: 30,
            buffer_before_minutes: 0,
            buffer_after_minutes: 0,
            synonyms: synonyms.iter().map(|s| s.to_string()).collect(),
            staff_ids: vec![],
        };
        vec![
            mk("consult", "Initial Consultation", &["first visit", "check-up"]),
            mk("clean", "Teeth Cleaning", &["hygiene", "check-up"]),
            mk("deep-clean", "Deep Cleaning", &[]),
            mk("epil", "Épilation", &["waxing"]),
        ]
    }

    fn found_id(m: ServiceMatch<'_>) -> Option<String> {
        match m {
            ServiceMatch::Found(s) => Some(s.id.clone()),
            _ => None,
        }
    }

    #[test]
    fn resolve_service_exact_is_case_accent_and_punctuation_insensitive() {
        let s = services();
        assert_eq!(found_id(resolve_service(&s, "initial consultation")).as_deref(), Some("consult"));
        assert_eq!(found_id(resolve_service(&s, "  HYGIENE! ")).as_deref(), Some("clean"));
        assert_eq!(found_id(resolve_service(&s, "epilation")).as_deref(), Some("epil"));
        assert_eq!(found_id(resolve_service(&s, "E\u{301}PILATION")).as_deref(), Some("epil"));
        assert_eq!(found_id(resolve_service(&s, "deep-clean")).as_deref(), Some("deep-clean"));
        match resolve_service(&s, "Check Up") {
            ServiceMatch::Ambiguous(v) => {
                assert_eq!(v.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["consult", "clean"])
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn resolve_service_phrases_partials_and_typos() {
        let s = services();
        assert_eq!(found_id(resolve_service(&s, "I'd like a deep cleaning please")).as_deref(), Some("deep-clean"));
        assert_eq!(found_id(resolve_service(&s, "just a teeth cleaning")).as_deref(), Some("clean"));
        assert_eq!(found_id(resolve_service(&s, "consult")).as_deref(), Some("consult"));
        match resolve_service(&s, "cleaning") {
            ServiceMatch::Ambiguous(v) => assert_eq!(v.len(), 2),
            other => panic!("{other:?}"),
        }
        assert_eq!(found_id(resolve_service(&s, "teeth clening")).as_deref(), Some("clean"));
        assert_eq!(found_id(resolve_service(&s, "initial consultaton")).as_deref(), Some("consult"));
        assert_eq!(resolve_service(&s, "oil change"), ServiceMatch::NotFound);
        assert_eq!(resolve_service(&s, "  "), ServiceMatch::NotFound);
    }

    #[test]
    fn similarity_is_normalized_levenshtein() {
        assert_eq!(similarity("", ""), 1.0);
        assert_eq!(similarity("abc", "abc"), 1.0);
        assert_eq!(similarity("abc", ""), 0.0);
        assert!((similarity("kitten", "sitting") - (1.0 - 3.0 / 7.0)).abs() < 1e-12);
    }

    // ---- property: engine == brute-force oracle ----

    const ZONES: [&str; 7] = [
        "America/New_York",
        "Europe/London",
        "Australia/Lord_Howe", // 30-minute DST shift
        "America/St_Johns",    // -03:30
        "Asia/Kolkata",        // +05:30, no DST
        "Asia/Beirut",         // falls back across midnight
        "America/Havana",      // springs forward at midnight
    ];

    #[derive(Debug, Clone)]
    struct Case {
        rules: ScheduleRules,
        service: ServiceType,
        staff: Vec<StaffMember>,
        busy: Vec<Busy>,
        window: Interval,
        now: Timestamp,
    }

    fn arb_range() -> impl Strategy<Value = OpeningHours> {
        prop_oneof![
            // Small hours: hits the transition of most zones.
            (0i32..=3, 1i32..=6).prop_map(|(o, l)| (o * 60, (o + l) * 60)),
            (0i32..24 * 60, 1i32..=600).prop_map(|(o, l)| (o, o + l)),
            Just((9 * 60, 17 * 60)),
        ]
        .prop_map(|(open, close)| {
            let t = |m: i32| Time::new((m / 60) as i8, (m % 60) as i8, 0, 0).unwrap();
            OpeningHours { open: t(open), close: if close >= 24 * 60 { Time::midnight() } else { t(close) } }
        })
    }

    fn arb_case() -> impl Strategy<Value = Case> {
        let zone_and_anchor = (0..ZONES.len(), 0usize..3).prop_map(|(z, k)| {
            let tz = zone(ZONES[z]);
            let anchor =
                if k == 2 { None } else { tz.following(ts("2026-01-01T00:00:00Z")).nth(k).map(|t| t.timestamp()) };
            (ZONES[z], anchor.unwrap_or(ts("2026-06-15T12:00:00Z")))
        });
        let staff_member =
            (prop::collection::vec(prop::collection::vec(arb_range(), 0..=2), 7), any::<bool>(), any::<bool>());
        (
            zone_and_anchor,
            (
                prop_oneof![Just(0u32), Just(15), Just(30), Just(60), 1u32..=120],
                prop_oneof![Just(0u32), 0u32..=300],
                prop_oneof![1 => Just(0u32), 6 => 1u32..=4],
            ),
            (
                prop_oneof![Just(30u32), Just(60), 1u32..=240],
                0u32..=30,
                0u32..=30,
                prop_oneof![6 => Just(0u32), 2 => 1u32..=2, 1 => Just(3)],
            ),
            prop::collection::vec(staff_member, 1..=3),
            prop::collection::vec((0usize..4, -360i64..2880, 0i64..=240), 0..=10),
            (-2160i64..=720, 0i64..=2880, -2880i64..=360),
        )
            .prop_map(
                |((tz, anchor), (interval, notice, horizon), (dur, before, after, who), staff, busy, (w0, wl, n0))| {
                    let ids = ["ann", "bob", "cid"];
                    let window_start = anchor + SignedDuration::from_mins(w0);
                    let window = Interval::new(window_start, window_start + SignedDuration::from_mins(wl));
                    let staff: Vec<StaffMember> = staff
                        .into_iter()
                        .enumerate()
                        .map(|(i, (days, other_zone, closed))| {
                            let days: [Vec<OpeningHours>; 7] = days.try_into().unwrap();
                            let tz = if other_zone { "America/New_York" } else { tz };
                            let mut m = member(ids[i], tz, vec![]);
                            m.hours = WeeklyHours::new(days);
                            if closed {
                                m.closed_dates = vec![m.time_zone.to_datetime(window_start).date()];
                            }
                            m
                        })
                        .collect();
                    let mut service = service(dur, before, after);
                    service.staff_ids = match who {
                        0 => vec![],
                        1 => vec!["ann".into()],
                        2 => vec!["bob".into(), "cid".into()],
                        _ => vec!["nobody".into()],
                    };
                    let busy = busy
                        .into_iter()
                        .map(|(who, at, len)| {
                            let start = window_start + SignedDuration::from_mins(at);
                            Busy {
                                staff_id: ["ann", "bob", "cid", "zed"][who].into(),
                                interval: Interval::new(start, start + SignedDuration::from_mins(len)),
                            }
                        })
                        .collect();
                    Case {
                        rules: ScheduleRules {
                            slot_interval_minutes: interval,
                            min_notice_minutes: notice,
                            horizon_days: horizon,
                        },
                        service,
                        staff,
                        busy,
                        window,
                        now: window_start + SignedDuration::from_mins(n0),
                    }
                },
            )
    }

    /// Walks every minute of the window and checks each condition directly.
    fn oracle(c: &Case) -> BTreeSet<(Timestamp, String)> {
        let minute = SignedDuration::from_mins(1);
        let dur = i64::from(c.service.duration_minutes);
        let step = i64::from(if c.rules.slot_interval_minutes == 0 {
            c.service.duration_minutes
        } else {
            c.rules.slot_interval_minutes
        });
        let mut out = BTreeSet::new();
        if dur == 0 {
            return out;
        }
        let not_before = c.now + SignedDuration::from_mins(i64::from(c.rules.min_notice_minutes));
        let horizon = c.now + SignedDuration::from_hours(24 * i64::from(c.rules.horizon_days));
        for st in &c.staff {
            if !c.service.staff_ids.is_empty() && !c.service.staff_ids.contains(&st.id) {
                continue;
            }
            let tz = &st.time_zone;
            let mut m = c.window.start;
            while m < c.window.end {
                let end = m + SignedDuration::from_mins(dur);
                let local = tz.to_datetime(m);
                let date = local.date();
                let is_candidate = tz.to_ambiguous_timestamp(local).earlier().unwrap() == m
                    && !st.closed_dates.contains(&date)
                    && st.hours.on(date.weekday()).iter().any(|r| {
                        let of = |t: Time| i64::from(t.hour()) * 60 + i64::from(t.minute());
                        let open = of(r.open);
                        let close = if r.close == Time::midnight() { 24 * 60 } else { of(r.close) };
                        let at = of(local.time());
                        let close_dt = if r.close == Time::midnight() {
                            date.tomorrow().unwrap().to_datetime(Time::midnight())
                        } else {
                            date.to_datetime(r.close)
                        };
                        let close_at = tz.to_ambiguous_timestamp(close_dt).compatible().unwrap();
                        open <= at && at < close && (at - open) % step == 0 && end <= close_at
                    });
                let blocked = Interval::new(
                    m - SignedDuration::from_mins(i64::from(c.service.buffer_before_minutes)),
                    end + SignedDuration::from_mins(i64::from(c.service.buffer_after_minutes)),
                );
                if is_candidate
                    && end <= c.window.end
                    && m >= not_before
                    && m < horizon
                    && c.busy.iter().all(|b| b.staff_id != st.id || !b.interval.overlaps(&blocked))
                {
                    out.insert((m, st.id.clone()));
                }
                m += minute;
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn enumerate_slots_matches_brute_force_oracle(c in arb_case()) {
            let slots = enumerate_slots(&c.rules, &c.staff, &c.service, &c.busy, c.window, c.now);
            for pair in slots.windows(2) {
                prop_assert!((pair[0].start, &pair[0].staff_id) < (pair[1].start, &pair[1].staff_id), "sorted, unique");
            }
            for s in &slots {
                prop_assert_eq!(s.end, s.start + c.service.duration());
            }
            let got: BTreeSet<(Timestamp, String)> = slots.into_iter().map(|s| (s.start, s.staff_id)).collect();
            prop_assert_eq!(got, oracle(&c));
        }

        #[test]
        fn pick_options_is_a_deterministic_subset_with_distinct_starts(
            c in arb_case(),
            count in 0usize..6,
            day in prop::option::of(-1i64..3),
            part in prop::option::of(0usize..3),
        ) {
            let slots = enumerate_slots(&c.rules, &c.staff, &c.service, &c.busy, c.window, c.now);
            let tz = zone("America/New_York");
            let pref = SlotPreference {
                day: day.map(|d| tz.to_datetime(c.window.start).date() + SignedDuration::from_hours(24 * d)),
                part_of_day: part.map(|p| [PartOfDay::Morning, PartOfDay::Afternoon, PartOfDay::Evening][p]),
                not_before: None,
            };
            let picked = pick_options(&slots, count, &pref, &tz);
            let distinct: BTreeSet<Timestamp> = slots.iter().map(|s| s.start).collect();
            prop_assert_eq!(picked.len(), count.min(distinct.len()));
            let starts: BTreeSet<Timestamp> = picked.iter().map(|s| s.start).collect();
            prop_assert_eq!(starts.len(), picked.len());
            for p in &picked {
                prop_assert!(slots.contains(p));
            }
            prop_assert_eq!(&picked, &pick_options(&slots, count, &pref, &tz));
        }
    }
}
