//! Tool names, their JSON Schemas (`tools/list`) and typed argument parsing (`tools/call`).
//!
//! Only tools that are built are listed. Arguments are parsed here, at the edge, into
//! [`ToolCall`]; a wrong or missing argument becomes a tool error naming the argument, so the AI
//! can correct itself.

use serde_json::{Map, Value, json};

/// A parsed tool call. Built once per request and consumed at once, so `end_call`'s larger
/// arguments are not worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum ToolCall {
    StartCall,
    /// With what the caller said about themselves, if anything: the lookup is redone with it.
    GetCallerContext(IdentityArgs),
    ListServices,
    FindSlots(FindSlotsArgs),
    HoldSlot(HoldSlotArgs),
    ReleaseHold {
        hold_id: String,
    },
    BookSlot(BookSlotArgs),
    FindAppointments,
    RescheduleAppointment {
        appointment_id: String,
        start: String,
    },
    CancelAppointment {
        appointment_id: String,
        reason: Option<String>,
    },
    Escalate {
        reason: String,
        urgency: String,
    },
    EndCall(EndCallArgs),
}

impl ToolCall {
    pub fn name(&self) -> &'static str {
        match self {
            ToolCall::StartCall => "start_call",
            ToolCall::GetCallerContext(_) => "get_caller_context",
            ToolCall::ListServices => "list_services",
            ToolCall::FindSlots(_) => "find_slots",
            ToolCall::HoldSlot(_) => "hold_slot",
            ToolCall::ReleaseHold { .. } => "release_hold",
            ToolCall::BookSlot(_) => "book_slot",
            ToolCall::FindAppointments => "find_appointments",
            ToolCall::RescheduleAppointment { .. } => "reschedule_appointment",
            ToolCall::CancelAppointment { .. } => "cancel_appointment",
            ToolCall::Escalate { .. } => "escalate",
            ToolCall::EndCall(_) => "end_call",
        }
    }
}

/// What the caller said about who they are (mid-call identity update).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct IdentityArgs {
    pub name: Option<String>,
    pub email: Option<String>,
    pub zip: Option<String>,
}

impl IdentityArgs {
    pub fn is_empty(&self) -> bool {
        self.name.is_none() && self.email.is_none() && self.zip.is_none()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct FindSlotsArgs {
    pub service: String,
    /// `YYYY-MM-DD` in the business's zone.
    pub day: Option<String>,
    /// `morning`, `afternoon` or `evening`.
    pub part_of_day: Option<String>,
    pub count: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HoldSlotArgs {
    pub service: String,
    /// RFC 3339 start, as returned by `find_slots`.
    pub start: String,
    pub staff_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BookSlotArgs {
    pub hold_id: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub notes: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct EndCallArgs {
    pub summary: String,
    pub disposition: Option<String>,
    pub duration_secs: Option<u64>,
    pub recording_url: Option<String>,
    pub transcript_url: Option<String>,
    pub caller_name: Option<String>,
    pub caller_email: Option<String>,
    pub caller_zip: Option<String>,
    pub intent: Option<String>,
    /// Qualification answers by question key.
    pub answers: std::collections::BTreeMap<String, String>,
    pub sentiment: Option<String>,
    /// As the caller said it (any language); the tenant's mapping makes it canonical.
    pub urgency: Option<String>,
    /// BCP 47 language tag, e.g. `es` or `en-US`.
    pub language: Option<String>,
    pub related_ticket_id: Option<String>,
}

/// Why a `tools/call` could not be turned into a [`ToolCall`].
#[derive(Debug, Clone, PartialEq)]
pub enum ToolParseError {
    /// Not a tool this server has: a protocol fault (-32602 per the MCP tools spec).
    UnknownTool(String),
    /// The tool exists but an argument is wrong: a tool error the AI can act on.
    BadArgument { argument: String, reason: String },
}

pub fn parse_call(name: &str, arguments: &Value) -> Result<ToolCall, ToolParseError> {
    let empty = Map::new();
    let args = match arguments {
        Value::Null => &empty,
        Value::Object(m) => m,
        _ => {
            return Err(ToolParseError::BadArgument {
                argument: "arguments".into(),
                reason: "must be an object".into(),
            });
        }
    };
    let a = Args(args);
    Ok(match name {
        "start_call" => ToolCall::StartCall,
        "get_caller_context" => ToolCall::GetCallerContext(IdentityArgs {
            name: a.optional_str("name")?,
            email: a.optional_str("email")?,
            zip: a.optional_str("zip")?,
        }),
        "list_services" => ToolCall::ListServices,
        "find_slots" => ToolCall::FindSlots(FindSlotsArgs {
            service: a.required_str("service")?,
            day: a.optional_str("day")?,
            part_of_day: a.optional_enum("part_of_day", &["morning", "afternoon", "evening"])?,
            count: a.optional_u64("count", 1, 5)?.unwrap_or(3) as usize,
        }),
        "hold_slot" => ToolCall::HoldSlot(HoldSlotArgs {
            service: a.required_str("service")?,
            start: a.required_str("start")?,
            staff_id: a.optional_str("staff_id")?,
        }),
        "release_hold" => ToolCall::ReleaseHold { hold_id: a.required_str("hold_id")? },
        "book_slot" => ToolCall::BookSlot(BookSlotArgs {
            hold_id: a.required_str("hold_id")?,
            name: a.optional_str("name")?,
            email: a.optional_str("email")?,
            notes: a.optional_str("notes")?,
        }),
        "find_appointments" => ToolCall::FindAppointments,
        "reschedule_appointment" => ToolCall::RescheduleAppointment {
            appointment_id: a.required_str("appointment_id")?,
            start: a.required_str("start")?,
        },
        "cancel_appointment" => ToolCall::CancelAppointment {
            appointment_id: a.required_str("appointment_id")?,
            reason: a.optional_str("reason")?,
        },
        "end_call" => ToolCall::EndCall(EndCallArgs {
            summary: a.required_str("summary")?,
            disposition: a.optional_str("disposition")?,
            duration_secs: a.optional_u64("duration_secs", 0, 24 * 3600)?,
            recording_url: a.optional_url("recording_url")?,
            transcript_url: a.optional_url("transcript_url")?,
            caller_name: a.optional_str("caller_name")?,
            caller_email: a.optional_str("caller_email")?,
            caller_zip: a.optional_str("caller_zip")?,
            intent: a.optional_str("intent")?,
            answers: a.optional_answers("answers")?,
            sentiment: a.optional_str("sentiment")?,
            urgency: a.optional_str("urgency")?,
            language: a.optional_language("language")?,
            related_ticket_id: a.optional_str("related_ticket_id")?,
        }),
        "escalate" => ToolCall::Escalate {
            reason: a.required_str("reason")?,
            urgency: a.optional_enum("urgency", &["low", "medium", "high"])?.unwrap_or_else(|| "medium".into()),
        },
        other => return Err(ToolParseError::UnknownTool(other.to_owned())),
    })
}

struct Args<'a>(&'a Map<String, Value>);

impl Args<'_> {
    fn bad(argument: &str, reason: &str) -> ToolParseError {
        ToolParseError::BadArgument { argument: argument.into(), reason: reason.into() }
    }

    fn optional_str(&self, key: &str) -> Result<Option<String>, ToolParseError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > 4096 => Err(Self::bad(key, "is too long")),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
            Some(_) => Err(Self::bad(key, "must be a string")),
        }
    }

    fn required_str(&self, key: &str) -> Result<String, ToolParseError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Err(Self::bad(key, "is required")),
            Some(_) => self.optional_str(key)?.ok_or_else(|| Self::bad(key, "must not be empty")),
        }
    }

    fn optional_enum(&self, key: &str, allowed: &[&str]) -> Result<Option<String>, ToolParseError> {
        match self.optional_str(key)? {
            None => Ok(None),
            Some(v) if allowed.contains(&v.as_str()) => Ok(Some(v)),
            Some(_) => Err(Self::bad(key, &format!("must be one of: {}", allowed.join(", ")))),
        }
    }

    fn optional_u64(&self, key: &str, min: u64, max: u64) -> Result<Option<u64>, ToolParseError> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) if (min..=max).contains(&v) => Ok(Some(v)),
                _ => Err(Self::bad(key, &format!("must be a whole number from {min} to {max}"))),
            },
            Some(_) => Err(Self::bad(key, "must be a number")),
        }
    }

    /// An object of short string answers keyed by question (at most 30, keys of letters, digits,
    /// `_` and `-`).
    fn optional_answers(&self, key: &str) -> Result<std::collections::BTreeMap<String, String>, ToolParseError> {
        let mut out = std::collections::BTreeMap::new();
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(out),
            Some(Value::Object(m)) => {
                if m.len() > 30 {
                    return Err(Self::bad(key, "has more than 30 answers"));
                }
                for (k, v) in m {
                    if k.is_empty()
                        || k.len() > 64
                        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    {
                        return Err(Self::bad(key, "keys must be 1-64 letters, digits, '_' or '-'"));
                    }
                    match v {
                        Value::Null => {}
                        Value::String(s) if s.len() > 1000 => return Err(Self::bad(key, "an answer is too long")),
                        Value::String(s) if s.trim().is_empty() => {}
                        Value::String(s) => {
                            out.insert(k.clone(), s.trim().to_owned());
                        }
                        Value::Number(n) => {
                            out.insert(k.clone(), n.to_string());
                        }
                        Value::Bool(b) => {
                            out.insert(k.clone(), if *b { "yes" } else { "no" }.to_owned());
                        }
                        _ => return Err(Self::bad(key, "answers must be strings, numbers or booleans")),
                    }
                }
                Ok(out)
            }
            Some(_) => Err(Self::bad(key, "must be an object of answers")),
        }
    }

    fn optional_language(&self, key: &str) -> Result<Option<String>, ToolParseError> {
        match self.optional_str(key)? {
            None => Ok(None),
            Some(v) => {
                let ok = v.len() <= 35
                    && v.split('-')
                        .all(|p| !p.is_empty() && p.len() <= 8 && p.chars().all(|c| c.is_ascii_alphanumeric()))
                    && v.split('-')
                        .next()
                        .is_some_and(|p| (2..=3).contains(&p.len()) && p.chars().all(|c| c.is_ascii_alphabetic()));
                if ok { Ok(Some(v)) } else { Err(Self::bad(key, "must be a language tag like es or en-US")) }
            }
        }
    }

    fn optional_url(&self, key: &str) -> Result<Option<String>, ToolParseError> {
        match self.optional_str(key)? {
            None => Ok(None),
            Some(v) => match url::Url::parse(&v) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => Ok(Some(v)),
                _ => Err(Self::bad(key, "must be an http(s) URL")),
            },
        }
    }
}

/// The `tools/list` result: every built tool with input and output schemas and a description
/// written for the model that will call it. One list for every transport: `call_id` is accepted
/// by every tool (required over HTTP, where it names the call; ignored on the per-call socket),
/// and `start_call` also takes the caller's and the dialed number (used over HTTP, where no socket
/// URL carried them). Every result's text is one sentence the assistant can say as is.
pub fn list() -> Value {
    let text = json!({"type": "string"});
    let call_id = json!({"type": "string", "description": "The phone call's id, the same on every tool call of this call (required over HTTP)."});
    let with_call_id = |mut schema: Value| {
        schema["properties"]["call_id"] = call_id.clone();
        schema
    };
    let tools = vec![
        tool(
            "start_call",
            "Call first, when the phone call starts. Opens the call and starts looking the caller up. Returns the business name and whether the caller is known yet; the text says who you are connected to.",
            json!({"type": "object", "properties": {
                "call_id": call_id,
                "from": {"type": "string", "description": "The caller's phone number as received, e.g. +14155550134 (omit if withheld)."},
                "to": {"type": "string", "description": "The number the caller dialed (the business's number)."}
            }, "additionalProperties": false}),
            json!({"type": "object", "properties": {"call_id": text, "business": text, "caller_status": text}, "required": ["call_id", "business", "caller_status"]}),
        ),
        tool(
            "get_caller_context",
            "Who is calling: their CRM record (name, email), open deals and tickets, the last contact with them and their upcoming appointments, found by the number they call from. If the caller tells you their email (or their name and zip code) call it again with them: the lookup is redone, e.g. for a known customer calling from a new number. Returns status matched, new, ambiguous, withheld or unavailable, and a greeting hint that is safe to say.",
            with_call_id(json!({"type": "object", "properties": {
                "email": {"type": "string", "description": "The caller's email, if they gave it."},
                "name": {"type": "string", "description": "The caller's full name, if they gave it."},
                "zip": {"type": "string", "description": "The caller's postal code, if they gave it."}
            }, "additionalProperties": false})),
            json!({"type": "object", "properties": {
                "status": {"type": "string", "enum": ["matched", "new", "ambiguous", "withheld", "unavailable"]},
                "greeting_hint": text,
                "contact": {"type": ["object", "null"]},
                "open_deals": {"type": "array"},
                "open_tickets": {"type": "array"},
                "last_touchpoint": {"type": ["object", "null"]},
                "upcoming_appointments": {"type": "array"},
                "new_number": {"type": ["string", "null"], "description": "A number the record did not have, added after the call."}
            }, "required": ["status", "greeting_hint"]}),
        ),
        tool(
            "list_services",
            "What can be booked: each service's id, name and duration in minutes. The text lists them in one sentence.",
            with_call_id(json!({"type": "object", "properties": {}, "additionalProperties": false})),
            json!({"type": "object", "properties": {"services": {"type": "array", "items": {"type": "object", "properties": {"id": text, "name": text, "duration_minutes": {"type": "integer"}}}}}, "required": ["services"]}),
        ),
        tool(
            "find_slots",
            "Offer appointment times for a service. Returns 2-3 options (start times in the business's time zone, each with a label to say). Pass the service id or name as the caller said it; optionally a day (YYYY-MM-DD) and a part of day.",
            with_call_id(json!({"type": "object", "properties": {
                "service": {"type": "string", "description": "Service id or spoken name, e.g. \"consult\"."},
                "day": {"type": "string", "description": "Preferred day, YYYY-MM-DD, business time zone."},
                "part_of_day": {"type": "string", "enum": ["morning", "afternoon", "evening"]},
                "count": {"type": "integer", "minimum": 1, "maximum": 5, "default": 3}
            }, "required": ["service"], "additionalProperties": false})),
            json!({"type": "object", "properties": {"service_id": text, "time_zone": text, "slots": {"type": "array", "items": {"type": "object", "properties": {"start": text, "end": text, "staff_id": text, "label": text}}}}, "required": ["slots"]}),
        ),
        tool(
            "hold_slot",
            "Reserve one offered time while the caller confirms, so nobody else can take it. Pass the service and the exact start from find_slots. Returns a hold_id; the hold expires after a few minutes.",
            with_call_id(json!({"type": "object", "properties": {
                "service": text,
                "start": {"type": "string", "description": "RFC 3339 start time exactly as returned by find_slots."},
                "staff_id": {"type": "string", "description": "Staff id from find_slots (optional)."}
            }, "required": ["service", "start"], "additionalProperties": false})),
            json!({"type": "object", "properties": {"hold_id": text, "expires_at": text, "start": text, "staff_id": text}, "required": ["hold_id"]}),
        ),
        tool(
            "release_hold",
            "Let go of a held time the caller no longer wants.",
            with_call_id(
                json!({"type": "object", "properties": {"hold_id": text}, "required": ["hold_id"], "additionalProperties": false}),
            ),
            json!({"type": "object", "properties": {"released": {"type": "boolean"}}, "required": ["released"]}),
        ),
        tool(
            "book_slot",
            "Book a held time into the business calendar once the caller confirms. Pass the hold_id and the caller's name and email if known. If the time was taken meanwhile, the result is an error that offers alternatives to say. If the calendar cannot be reached, the result says pending: true — the booking is NOT confirmed yet; tell the caller so: the time is kept and the business confirms it or calls back.",
            with_call_id(json!({"type": "object", "properties": {
                "hold_id": text, "name": text, "email": text, "notes": text
            }, "required": ["hold_id"], "additionalProperties": false})),
            json!({"type": "object", "properties": {"booked": {"type": "boolean"}, "event_id": text, "start": text, "end": text, "alternatives": {"type": "array"}, "pending": {"type": "boolean"}, "pending_id": text, "retry_until": text}, "required": ["booked"]}),
        ),
        tool(
            "escalate",
            "Hand the caller to a person: creates a follow-up task for the right team member, due sooner the more urgent it is, and puts the reason on the call log. Use when the caller needs a human (a complaint, an emergency, something you cannot do). Say the returned text.",
            with_call_id(json!({"type": "object", "properties": {
                "reason": {"type": "string", "description": "Why a person must follow up, in one sentence."},
                "urgency": {"type": "string", "enum": ["low", "medium", "high"], "default": "medium"}
            }, "required": ["reason"], "additionalProperties": false})),
            json!({"type": "object", "properties": {"escalated": {"type": "boolean"}, "urgency": text, "due_at": text}, "required": ["escalated"]}),
        ),
        tool(
            "end_call",
            "Call last, when the conversation is over. Saves the call's outcome for the CRM. Pass a one-sentence summary and whatever the caller told you (name, email, zip, why they called, answers to the business's questions, urgency, language). Leave out what you did not learn.",
            with_call_id(json!({"type": "object", "properties": {
                "summary": text,
                "disposition": {"type": "string", "description": "e.g. booked, info_only, escalated"},
                "duration_secs": {"type": "integer", "minimum": 0},
                "recording_url": text, "transcript_url": text,
                "caller_name": text, "caller_email": text, "caller_zip": text,
                "intent": {"type": "string", "description": "Why they called, in a few words."},
                "answers": {"type": "object", "description": "Answers to the business's qualification questions, by question key, as the caller gave them.", "additionalProperties": {"type": ["string", "number", "boolean"]}},
                "sentiment": {"type": "string", "description": "The caller's mood: positive, neutral or negative (in the call's language is fine)."},
                "urgency": {"type": "string", "description": "The caller's urgency as they said it, in their language (e.g. high, alta)."},
                "language": {"type": "string", "description": "The call's language, e.g. en or es."},
                "related_ticket_id": {"type": "string", "description": "The id of an existing ticket or work order the call was about."}
            }, "required": ["summary"], "additionalProperties": false})),
            json!({"type": "object", "properties": {"saved": {"type": "boolean"}, "steps": {"type": "integer"}}, "required": ["saved"]}),
        ),
    ];
    json!({ "tools": tools })
}

fn tool(name: &str, description: &str, input: Value, output: Value) -> Value {
    json!({"name": name, "description": description, "inputSchema": input, "outputSchema": output})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_tool_parses_and_nothing_unlisted_does() {
        let listed: Vec<String> =
            list()["tools"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect();
        for name in &listed {
            // Parsing with empty arguments either succeeds or names a missing argument: never
            // "unknown tool".
            match parse_call(name, &json!({})) {
                Ok(call) => assert_eq!(call.name(), name),
                Err(ToolParseError::BadArgument { .. }) => {}
                Err(e) => panic!("{name}: {e:?}"),
            }
        }
        assert_eq!(parse_call("transfer", &json!({})), Err(ToolParseError::UnknownTool("transfer".into())));
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = parse_call("find_slots", &json!({"service": 5})).unwrap_err();
        assert_eq!(e, ToolParseError::BadArgument { argument: "service".into(), reason: "must be a string".into() });
        let e = parse_call("find_slots", &json!({"service": "consult", "count": 9})).unwrap_err();
        assert!(matches!(e, ToolParseError::BadArgument { argument, .. } if argument == "count"));
        let e = parse_call("end_call", &json!({"summary": "x", "recording_url": "javascript:alert(1)"})).unwrap_err();
        assert!(matches!(e, ToolParseError::BadArgument { argument, .. } if argument == "recording_url"));
        let e = parse_call("escalate", &json!({"reason": "x", "urgency": "now"})).unwrap_err();
        assert!(matches!(e, ToolParseError::BadArgument { argument, .. } if argument == "urgency"));
        for bad in [json!({"answers": "x"}), json!({"answers": {"bad key": "x"}}), json!({"answers": {"k": [1]}})] {
            let mut args = bad.clone();
            args["summary"] = json!("s");
            let e = parse_call("end_call", &args).unwrap_err();
            assert!(
                matches!(e, ToolParseError::BadArgument { ref argument, .. } if argument == "answers"),
                "{bad}: {e:?}"
            );
        }
        let e = parse_call("end_call", &json!({"summary": "s", "language": "spanish please"})).unwrap_err();
        assert!(matches!(e, ToolParseError::BadArgument { argument, .. } if argument == "language"));
        let ok = parse_call(
            "end_call",
            &json!({"summary": "s", "language": "es-MX", "answers": {"budget": 1200, "pets": "dos gatos", "new": true}}),
        )
        .unwrap();
        let ToolCall::EndCall(a) = ok else { panic!() };
        assert_eq!(a.answers.get("budget").map(String::as_str), Some("1200"));
        assert_eq!(a.answers.get("new").map(String::as_str), Some("yes"));
        let e = parse_call("hold_slot", &json!({"start": "2026-11-24T10:00:00-05:00"})).unwrap_err();
        assert!(
            matches!(e, ToolParseError::BadArgument { argument, reason } if argument == "service" && reason == "is required")
        );
    }
}
