//! Calendar: the record shape of an iCalendar object (docs/SCHEMA.md), both ways.
//!
//! One record is one calendar object as CalDAV knows it: a `VCALENDAR` holding one
//! event or task (by UID) with its overrides (`RECURRENCE-ID`) and time zones. The
//! fields describe the main component; `ical` keeps the text. When fields change, only
//! the lines of the changed fields inside the main component are written anew.

use calcard::icalendar::{
    ICalendar, ICalendarComponent, ICalendarComponentType, ICalendarParameterName,
    ICalendarProperty, ICalendarValue,
};
use serde_json::{Map, Value, json};

use super::PimError;
use super::lines::{self, Line};

/// The field holding the iCalendar text.
pub const ICAL: &str = "ical";

/// The fields of a calendar record.
pub const FIELDS: &[&str] = &[
    "uid",
    "kind",
    "summary",
    "description",
    "location",
    "status",
    "url",
    "start",
    "start_tz",
    "end",
    "end_tz",
    "due",
    "due_tz",
    "all_day",
    "rrule",
    "exdates",
    "overrides",
    "attendees",
    "organizer",
    "alarms",
    "categories",
];

/// Fields written from the text only (changing them in a record changes nothing).
pub(crate) const DERIVED: &[&str] = &["kind", "all_day", "overrides"];

fn properties_of(field: &str) -> &'static [&'static str] {
    match field {
        "uid" => &["UID"],
        "summary" => &["SUMMARY"],
        "description" => &["DESCRIPTION"],
        "location" => &["LOCATION"],
        "status" => &["STATUS"],
        "url" => &["URL"],
        "start" | "start_tz" => &["DTSTART"],
        "end" | "end_tz" => &["DTEND", "DURATION"],
        "due" | "due_tz" => &["DUE"],
        "rrule" => &["RRULE"],
        "exdates" => &["EXDATE"],
        "attendees" => &["ATTENDEE"],
        "organizer" => &["ORGANIZER"],
        "categories" => &["CATEGORIES"],
        _ => &[],
    }
}

pub fn parse(text: &str) -> Result<ICalendar, PimError> {
    match calcard::Parser::new(text).entry() {
        calcard::Entry::ICalendar(ical) => Ok(ical),
        other => Err(PimError::Unreadable(format!(
            "not an iCalendar object: {other:?}"
        ))),
    }
}

/// The main component: the first event or task that is not an override.
fn main_component(ical: &ICalendar) -> Option<&ICalendarComponent> {
    ical.components
        .iter()
        .find(|c| {
            matches!(
                c.component_type,
                ICalendarComponentType::VEvent
                    | ICalendarComponentType::VTodo
                    | ICalendarComponentType::VJournal
            ) && !c.is_recurrence_override()
        })
        .or_else(|| {
            ical.components.iter().find(|c| {
                matches!(
                    c.component_type,
                    ICalendarComponentType::VEvent
                        | ICalendarComponentType::VTodo
                        | ICalendarComponentType::VJournal
                )
            })
        })
}

/// The name of a calendar object's main component (`VEVENT`, `VTODO`, `VJOURNAL`), as
/// its text says.
pub fn main_component_name(text: &str) -> Option<String> {
    let lines = lines::split(text);
    let (begin, _) = main_range(&lines)?;
    Some(lines[begin].value().trim().to_ascii_uppercase())
}

/// The UID of a calendar object (its main component's).
pub fn uid_of(ical: &ICalendar) -> Option<String> {
    main_component(ical)
        .and_then(|c| c.uid())
        .map(str::to_owned)
}

fn value_text(v: &ICalendarValue) -> Option<String> {
    match v {
        ICalendarValue::Text(t) => Some(t.clone()),
        ICalendarValue::Integer(i) => Some(i.to_string()),
        ICalendarValue::PartialDateTime(d) => Some(format_date(d)),
        other => other.as_text().map(str::to_owned),
    }
}

/// `2026-11-22`, `2026-11-22T10:00:00`, or `2026-11-22T09:00:00Z`.
fn format_date(d: &calcard::common::PartialDateTime) -> String {
    let date = format!(
        "{:04}-{:02}-{:02}",
        d.year.unwrap_or_default(),
        d.month.unwrap_or_default(),
        d.day.unwrap_or_default()
    );
    match d.hour {
        None => date,
        Some(h) => {
            let zone = match (d.tz_hour, d.tz_minute) {
                (Some(0), None | Some(0)) => "Z".to_owned(),
                (Some(th), tm) => format!(
                    "{}{th:02}:{:02}",
                    if d.tz_minus { "-" } else { "+" },
                    tm.unwrap_or_default()
                ),
                (None, _) => String::new(),
            };
            format!(
                "{date}T{h:02}:{:02}:{:02}{zone}",
                d.minute.unwrap_or_default(),
                d.second.unwrap_or_default()
            )
        }
    }
}

/// The record fields of a calendar object (without `ical`).
pub fn fields(ical: &ICalendar) -> Map<String, Value> {
    let mut out = Map::new();
    let Some(main) = main_component(ical) else {
        return out;
    };
    let kind = match main.component_type {
        ICalendarComponentType::VTodo => "task",
        ICalendarComponentType::VJournal => "journal",
        _ => "event",
    };
    out.insert("kind".into(), json!(kind));
    let text = |p: ICalendarProperty| {
        main.property(&p)
            .and_then(|e| e.values.first())
            .and_then(value_text)
    };
    for (field, property) in [
        ("uid", ICalendarProperty::Uid),
        ("summary", ICalendarProperty::Summary),
        ("description", ICalendarProperty::Description),
        ("location", ICalendarProperty::Location),
        ("status", ICalendarProperty::Status),
        ("url", ICalendarProperty::Url),
    ] {
        if let Some(value) = text(property) {
            out.insert(field.into(), Value::String(value));
        }
    }
    for (field, property) in [
        ("start", ICalendarProperty::Dtstart),
        ("end", ICalendarProperty::Dtend),
        ("due", ICalendarProperty::Due),
    ] {
        if let Some(entry) = main.property(&property) {
            if let Some(value) = entry.values.first().and_then(value_text) {
                out.insert(field.into(), Value::String(value));
            }
            if let Some(tz) = entry.tz_id() {
                out.insert(format!("{field}_tz"), Value::String(tz.to_owned()));
            }
        }
    }
    if let Some(start) = main.property(&ICalendarProperty::Dtstart) {
        let all_day = start
            .values
            .first()
            .and_then(ICalendarValue::as_partial_date_time)
            .is_some_and(|d| d.hour.is_none());
        out.insert("all_day".into(), Value::Bool(all_day));
    }
    if let Some(rule) = main.property(&ICalendarProperty::Rrule)
        && let Some(ICalendarValue::RecurrenceRule(r)) = rule.values.first()
    {
        out.insert("rrule".into(), Value::String(r.to_string()));
    }
    let exdates: Vec<Value> = main
        .properties(&ICalendarProperty::Exdate)
        .flat_map(|e| e.values.iter().filter_map(value_text))
        .map(Value::String)
        .collect();
    if !exdates.is_empty() {
        out.insert("exdates".into(), Value::Array(exdates));
    }
    let overrides: Vec<Value> = ical
        .components
        .iter()
        .filter(|c| c.is_recurrence_override())
        .filter_map(|c| c.property(&ICalendarProperty::RecurrenceId))
        .filter_map(|e| e.values.first().and_then(value_text))
        .map(Value::String)
        .collect();
    if !overrides.is_empty() {
        out.insert("overrides".into(), Value::Array(overrides));
    }
    let attendees: Vec<Value> = main
        .properties(&ICalendarProperty::Attendee)
        .filter_map(|a| {
            let mut item = json!({ "email": a.calendar_address()? });
            for (key, param) in [
                ("name", ICalendarParameterName::Cn),
                ("role", ICalendarParameterName::Role),
                ("status", ICalendarParameterName::Partstat),
            ] {
                if let Some(v) = a.parameter(&param).and_then(|v| v.as_text()) {
                    item[key] = json!(v);
                }
            }
            Some(item)
        })
        .collect();
    if !attendees.is_empty() {
        out.insert("attendees".into(), Value::Array(attendees));
    }
    if let Some(o) = main.property(&ICalendarProperty::Organizer)
        && let Some(email) = o.calendar_address()
    {
        let mut organizer = json!({ "email": email });
        if let Some(name) = o
            .parameter(&ICalendarParameterName::Cn)
            .and_then(|v| v.as_text())
        {
            organizer["name"] = json!(name);
        }
        out.insert("organizer".into(), organizer);
    }
    let main_index = ical
        .components
        .iter()
        .position(|c| std::ptr::eq(c, main))
        .unwrap_or_default();
    let alarms: Vec<Value> = ical
        .alarms_for_id(main_index as u32)
        .map(|alarm| {
            let get = |p: ICalendarProperty| {
                alarm
                    .property(&p)
                    .and_then(|e| e.values.first())
                    .map(|v| match v {
                        ICalendarValue::Duration(d) => d.to_string(),
                        other => value_text(other).unwrap_or_default(),
                    })
            };
            let mut item = json!({});
            for (key, p) in [
                ("action", ICalendarProperty::Action),
                ("trigger", ICalendarProperty::Trigger),
                ("description", ICalendarProperty::Description),
            ] {
                if let Some(v) = get(p) {
                    item[key] = json!(v);
                }
            }
            item
        })
        .collect();
    if !alarms.is_empty() {
        out.insert("alarms".into(), Value::Array(alarms));
    }
    let categories: Vec<Value> = main
        .properties(&ICalendarProperty::Categories)
        .flat_map(|e| e.values.iter().filter_map(value_text))
        .map(Value::String)
        .collect();
    if !categories.is_empty() {
        out.insert("categories".into(), Value::Array(categories));
    }
    out
}

/// The iCalendar text for `record`: its stored text with the lines of every changed
/// field of the main component written anew (a record without text gets a new object).
pub fn render(record: &Map<String, Value>) -> Result<String, PimError> {
    let original = record.get(ICAL).and_then(Value::as_str);
    let (mut out, old) = match original {
        Some(text) => (lines::split(text), fields(&parse(text)?)),
        None => {
            let kind = match record.get("kind").and_then(Value::as_str) {
                Some("task") => "VTODO",
                Some("journal") => "VJOURNAL",
                _ => "VEVENT",
            };
            let text = format!(
                "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Hearth//Hearth//EN\r\nBEGIN:{kind}\r\nDTSTAMP:{FIELDS_STAMP}\r\nEND:{kind}\r\nEND:VCALENDAR\r\n"
            );
            (lines::split(&text), Map::new())
        }
    };
    let Some((begin, end)) = main_range(&out) else {
        return Err(PimError::Unreadable(
            "the calendar object has no event, task or journal entry".into(),
        ));
    };
    let mut main: Vec<Line> = out[begin + 1..end].to_vec();
    let mut changed = Vec::new();
    for field in FIELDS {
        if DERIVED.contains(field) || old.get(*field) == record.get(*field) {
            continue;
        }
        // A time and its zone are one property: write it once.
        let base = field.trim_end_matches("_tz");
        if changed.contains(&base) {
            continue;
        }
        changed.push(base);
        replace_in(&mut main, properties_of(base), lines_for(base, record));
    }
    if old.get("alarms") != record.get("alarms") {
        replace_alarms(&mut main, record);
    }
    out.splice(begin + 1..end, main);
    Ok(out.iter().map(|l| l.raw.as_str()).collect())
}

/// The line positions of the main component's `BEGIN` and `END`.
fn main_range(lines: &[Line]) -> Option<(usize, usize)> {
    let mut depth = 0;
    let mut candidate: Option<usize> = None;
    let mut fallback = None;
    for (i, line) in lines.iter().enumerate() {
        let name = line.name();
        let value = line.value().trim().to_ascii_uppercase();
        if name == "BEGIN" {
            depth += 1;
            if depth == 2 && matches!(value.as_str(), "VEVENT" | "VTODO" | "VJOURNAL") {
                candidate = Some(i);
            }
        } else if name == "END" {
            if depth == 2
                && let Some(start) = candidate.take()
            {
                let is_override = lines[start..i].iter().any(|l| l.is("RECURRENCE-ID"));
                if !is_override {
                    return Some((start, i));
                }
                fallback.get_or_insert((start, i));
            }
            depth -= 1;
        }
    }
    fallback
}

/// Replaces the property lines of the component's own level (not inside its alarms).
fn replace_in(main: &mut Vec<Line>, properties: &[&str], new: Vec<Line>) {
    let own = own_levels(main);
    let targeted: Vec<bool> = main
        .iter()
        .zip(&own)
        .map(|(l, own)| *own && properties.iter().any(|p| *p == l.name()))
        .collect();
    let at = targeted.iter().position(|t| *t).unwrap_or_else(|| {
        // Before the first sub-component, else at the end.
        main.iter()
            .position(|l| l.is("BEGIN"))
            .unwrap_or(main.len())
    });
    let before = targeted[..at].iter().filter(|t| **t).count();
    let mut kept: Vec<Line> = main
        .iter()
        .zip(&targeted)
        .filter(|(_, t)| !**t)
        .map(|(l, _)| l.clone())
        .collect();
    let insert_at = at - before;
    for (offset, line) in new.into_iter().enumerate() {
        kept.insert(insert_at + offset, line);
    }
    *main = kept;
}

/// For each line of a component's body, whether it is at the component's own level.
fn own_levels(lines: &[Line]) -> Vec<bool> {
    let mut depth = 0;
    lines
        .iter()
        .map(|l| match l.name().as_str() {
            "BEGIN" => {
                depth += 1;
                false
            }
            "END" => {
                depth -= 1;
                false
            }
            _ => depth == 0,
        })
        .collect()
}

/// Replaces the component's alarms (`VALARM` blocks) with the record's.
fn replace_alarms(main: &mut Vec<Line>, record: &Map<String, Value>) {
    let mut depth = 0;
    let mut in_alarm = false;
    main.retain(|l| {
        let name = l.name();
        if name == "BEGIN" {
            depth += 1;
            if depth == 1 && l.value().trim().eq_ignore_ascii_case("VALARM") {
                in_alarm = true;
            }
        }
        let keep = !in_alarm;
        if name == "END" {
            if depth == 1 {
                in_alarm = false;
            }
            depth -= 1;
        }
        keep
    });
    for alarm in record
        .get("alarms")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let get = |k: &str| alarm.get(k).and_then(Value::as_str).unwrap_or_default();
        let or = |v: &'static str, default: &'static str| -> String {
            let got = get(v);
            if got.is_empty() {
                default.to_owned()
            } else {
                got.to_owned()
            }
        };
        main.push(raw_line("BEGIN:VALARM"));
        main.push(content_line(
            "ACTION",
            &[],
            &escape(&or("action", "DISPLAY")),
        ));
        main.push(content_line("TRIGGER", &[], &or("trigger", "-PT15M")));
        main.push(content_line(
            "DESCRIPTION",
            &[],
            &escape(&or("description", "Reminder")),
        ));
        main.push(raw_line("END:VALARM"));
    }
}

fn lines_for(field: &str, record: &Map<String, Value>) -> Vec<Line> {
    let get = |k: &str| record.get(k).filter(|v| !v.is_null());
    let text = |k: &str| {
        get(k).map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
    };
    let list = |k: &str| -> Vec<Value> {
        get(k)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    match field {
        "uid" | "summary" | "description" | "location" | "url" => {
            let name = properties_of(field)[0];
            text(field)
                .map(|t| {
                    let value = if field == "url" { t } else { escape(&t) };
                    vec![content_line(name, &[], &value)]
                })
                .unwrap_or_default()
        }
        "status" => text(field)
            .map(|t| vec![content_line("STATUS", &[], &t.to_ascii_uppercase())])
            .unwrap_or_default(),
        "start" | "end" | "due" => {
            let name = properties_of(field)[0];
            match text(field) {
                Some(value) => vec![date_line(
                    name,
                    &value,
                    text(&format!("{field}_tz")).as_deref(),
                )],
                None => Vec::new(),
            }
        }
        "rrule" => text(field)
            .map(|t| vec![content_line("RRULE", &[], &t)])
            .unwrap_or_default(),
        "exdates" => {
            let tz = text("start_tz");
            list(field)
                .iter()
                .filter_map(Value::as_str)
                .map(|d| date_line("EXDATE", d, tz.as_deref()))
                .collect()
        }
        "categories" => {
            let items: Vec<String> = list(field)
                .iter()
                .filter_map(Value::as_str)
                .map(escape)
                .collect();
            if items.is_empty() {
                Vec::new()
            } else {
                vec![content_line("CATEGORIES", &[], &items.join(","))]
            }
        }
        "attendees" => list(field)
            .iter()
            .filter_map(|a| {
                let email = a.get("email")?.as_str()?;
                let mut params = Vec::new();
                for (key, param) in [("name", "CN"), ("role", "ROLE"), ("status", "PARTSTAT")] {
                    if let Some(v) = a.get(key).and_then(Value::as_str) {
                        params.push((param, v.to_owned()));
                    }
                }
                Some(content_line(
                    "ATTENDEE",
                    &params,
                    &format!("mailto:{email}"),
                ))
            })
            .collect(),
        "organizer" => get(field)
            .and_then(|o| {
                let email = o.get("email")?.as_str()?;
                let params: Vec<(&str, String)> = o
                    .get("name")
                    .and_then(Value::as_str)
                    .map(|n| vec![("CN", n.to_owned())])
                    .unwrap_or_default();
                Some(vec![content_line(
                    "ORGANIZER",
                    &params,
                    &format!("mailto:{email}"),
                )])
            })
            .unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// A `DTSTART`-like line from `2026-11-22`, `2026-11-22T10:00:00[Z]` and a zone.
fn date_line(name: &str, value: &str, tz: Option<&str>) -> Line {
    let compact: String = value.chars().filter(|c| *c != '-' && *c != ':').collect();
    if !value.contains('T') {
        return content_line(name, &[("VALUE", "DATE".into())], &compact);
    }
    let params: Vec<(&str, String)> = match tz {
        Some(tz) if !compact.ends_with('Z') => vec![("TZID", tz.to_owned())],
        _ => Vec::new(),
    };
    content_line(name, &params, &compact)
}

/// The `DTSTAMP` of an object made from fields (a record without text, or a grant that
/// cannot read the text). It must not be the clock: the same record must give the same
/// bytes every time it is served, or its strong ETag would change every second and DAV
/// clients would see it changed (and their `If-Match` fail) at every request.
const FIELDS_STAMP: &str = "19700101T000000Z";

/// RFC 5545 TEXT escaping.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            ';' => out.push_str("\\;"),
            ',' => out.push_str("\\,"),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

fn raw_line(text: &str) -> Line {
    Line {
        raw: format!("{text}\r\n"),
        number: 0,
    }
}

/// A content line, folded at 75 octets; parameter values quoted when they need it.
fn content_line(name: &str, params: &[(&str, String)], value: &str) -> Line {
    let mut line = name.to_owned();
    for (key, v) in params {
        let needs_quotes = v.contains([';', ':', ',']);
        let v: String = v.chars().filter(|c| *c != '"' && !c.is_control()).collect();
        if needs_quotes {
            line.push_str(&format!(";{key}=\"{v}\""));
        } else {
            line.push_str(&format!(";{key}={v}"));
        }
    }
    line.push(':');
    line.push_str(value);
    Line {
        raw: fold(&line),
        number: 0,
    }
}

/// Folds a line at 75 octets without splitting a character.
pub(super) fn fold(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 8);
    let mut width = 0;
    for c in line.chars() {
        let len = c.len_utf8();
        if width + len > 75 {
            out.push_str("\r\n ");
            width = 1;
        }
        out.push(c);
        width += len;
    }
    out.push_str("\r\n");
    out
}

/// A copy of `ical` without `SEQUENCE`, to expand: calcard pairs an override with its
/// instance only when both carry the same SEQUENCE, and an override usually carries a
/// higher one than its master (a moved meeting would otherwise take time twice).
fn without_sequence(ical: &ICalendar) -> ICalendar {
    let mut ical = ical.clone();
    for component in &mut ical.components {
        component
            .entries
            .retain(|e| e.name != ICalendarProperty::Sequence);
    }
    ical
}

/// Every occurrence `(start, end)` of a calendar object's events and to-dos (Unix
/// seconds; recurrences and overrides included, up to 10,000).
pub fn occurrences(ical: &ICalendar) -> Vec<(i64, i64)> {
    const EXPANSION_LIMIT: usize = 10_000;
    without_sequence(ical)
        .expand_dates(
            calcard::common::timezone::Tz::Tz(chrono_tz::UTC),
            EXPANSION_LIMIT,
        )
        .events
        .iter()
        .map(|e| e.timestamps())
        .collect()
}

/// Whether a calendar object has an occurrence overlapping `[start, end)` (Unix seconds),
/// recurrences and their exceptions included.
pub fn overlaps(ical: &ICalendar, start: i64, end: i64) -> bool {
    const EXPANSION_LIMIT: usize = 10_000;
    // A to-do with no date at all (no DTSTART, DUE, COMPLETED or CREATED) is in every
    // range (RFC 4791 §9.9).
    let undated = ical.components.iter().any(|c| {
        c.component_type == ICalendarComponentType::VTodo
            && [
                ICalendarProperty::Dtstart,
                ICalendarProperty::Due,
                ICalendarProperty::Completed,
                ICalendarProperty::Created,
            ]
            .iter()
            .all(|p| c.property(p).is_none())
    });
    if undated {
        return true;
    }
    let expanded = without_sequence(ical).expand_dates(
        calcard::common::timezone::Tz::Tz(chrono_tz::UTC),
        EXPANSION_LIMIT,
    );
    expanded.events.iter().any(|event| {
        let (s, e) = event.timestamps();
        s < end && (e > start || (e == s && s >= start))
    })
}

/// The busy times of a calendar object within `[start, end)` (Unix seconds), each
/// clipped to the range and marked tentative or not: its events' occurrences
/// (recurrences and exceptions included) unless transparent (`TRANSP:TRANSPARENT`) or
/// cancelled (RFC 4791 §7.10). To-dos and journals take no time.
pub fn busy(ical: &ICalendar, start: i64, end: i64) -> Vec<(i64, i64, bool)> {
    const EXPANSION_LIMIT: usize = 10_000;
    let text_of = |comp: &ICalendarComponent, p: ICalendarProperty| {
        comp.property(&p)
            .and_then(|e| e.values.first())
            .and_then(value_text)
            .map(|t| t.to_ascii_uppercase())
    };
    let expanded = without_sequence(ical).expand_dates(
        calcard::common::timezone::Tz::Tz(chrono_tz::UTC),
        EXPANSION_LIMIT,
    );
    let mut out = Vec::new();
    for event in &expanded.events {
        let Some(comp) = ical.components.get(event.comp_id as usize) else {
            continue;
        };
        if comp.component_type != ICalendarComponentType::VEvent {
            continue;
        }
        if text_of(comp, ICalendarProperty::Transp).as_deref() == Some("TRANSPARENT") {
            continue;
        }
        let status = text_of(comp, ICalendarProperty::Status);
        if status.as_deref() == Some("CANCELLED") {
            continue;
        }
        let (s, e) = event.timestamps();
        if s < end && e > start {
            out.push((
                s.max(start),
                e.min(end),
                status.as_deref() == Some("TENTATIVE"),
            ));
        }
    }
    out
}

/// A calendar object's text with its recurrences expanded over `[start, end)` (RFC
/// 4791 §9.6.5, `CALDAV:expand`): one component per occurrence in the range, times in
/// UTC (`DTSTART`, `DTEND`, and `RECURRENCE-ID` for an instance of a recurring
/// event), without `RRULE`, `RDATE`, `EXDATE` or time zones; an override stands for its
/// instance. Every other line of a component is kept as it was. `None` if the text
/// cannot be read.
pub fn expand_text(text: &str, start: i64, end: i64) -> Option<String> {
    let occurrences = occurrences_in(text, start, end)?;
    let lines = lines::split(text);
    let (ranges, header) = top_components(&lines)?;
    let utc = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|d| d.format("%Y%m%dT%H%M%SZ").to_string())
            .unwrap_or_default()
    };
    let recurring = |(b, e): (usize, usize)| {
        lines[b + 1..e]
            .iter()
            .any(|l| l.is("RRULE") || l.is("RDATE"))
    };
    let mut body = String::new();
    for (comp_id, s, e) in occurrences {
        let Some(Some((begin, finish))) = ranges.get(comp_id as usize).copied() else {
            continue;
        };
        let overrides = lines[begin + 1..finish]
            .iter()
            .any(|l| l.is("RECURRENCE-ID"));
        body.push_str(&lines[begin].raw);
        let mut depth = 0;
        for line in &lines[begin + 1..finish] {
            let name = line.name();
            match name.as_str() {
                "BEGIN" => depth += 1,
                "END" => depth -= 1,
                _ => {}
            }
            let dropped = depth == 0
                && matches!(
                    name.as_str(),
                    "DTSTART" | "DTEND" | "DURATION" | "RRULE" | "RDATE" | "EXDATE" | "EXRULE"
                )
                || (depth == 0 && name == "RECURRENCE-ID" && !overrides);
            if !dropped {
                body.push_str(&line.raw);
            }
        }
        body.push_str(&format!("DTSTART:{}\r\n", utc(s)));
        if e > s {
            body.push_str(&format!("DTEND:{}\r\n", utc(e)));
        }
        if !overrides && recurring((begin, finish)) {
            body.push_str(&format!("RECURRENCE-ID:{}\r\n", utc(s)));
        }
        body.push_str(&lines[finish].raw);
    }
    Some(format!(
        "BEGIN:VCALENDAR\r\n{header}{body}END:VCALENDAR\r\n"
    ))
}

/// The occurrences of a calendar object's components that overlap `[start, end)`
/// (RFC 4791 §9.9: an instant at `start` counts), each as (component number, start,
/// end) in UTC seconds; an override stands for its instance. `None` if the text
/// cannot be read.
fn occurrences_in(text: &str, start: i64, end: i64) -> Option<Vec<(u32, i64, i64)>> {
    const EXPANSION_LIMIT: usize = 10_000;
    let ical = parse(text).ok()?;
    let expanded = without_sequence(&ical).expand_dates(
        calcard::common::timezone::Tz::Tz(chrono_tz::UTC),
        EXPANSION_LIMIT,
    );
    Some(
        expanded
            .events
            .iter()
            .filter_map(|event| {
                let (s, e) = event.timestamps();
                (s < end && (e > start || (e == s && s >= start))).then_some((event.comp_id, s, e))
            })
            .collect(),
    )
}

/// A component's first and last line, if it is directly in the calendar.
type Span = Option<(usize, usize)>;

/// Each component's lines (first, last), by its number (the order of BEGIN lines, as
/// calcard numbers them), for the components directly in the calendar; and the
/// calendar's own property lines.
fn top_components(lines: &[lines::Line]) -> Option<(Vec<Span>, String)> {
    let mut ranges: Vec<Span> = Vec::new();
    let mut stack: Vec<(usize, usize)> = Vec::new();
    let mut header = String::new();
    for (i, line) in lines.iter().enumerate() {
        match line.name().as_str() {
            "BEGIN" => {
                stack.push((ranges.len(), i));
                ranges.push(None);
            }
            "END" => {
                let (number, begin) = stack.pop()?;
                if stack.len() == 1 {
                    ranges[number] = Some((begin, i));
                }
            }
            _ if stack.len() == 1 => header.push_str(&line.raw),
            _ => {}
        }
    }
    Some((ranges, header))
}

/// A calendar object as `calendar-data` with `limit-recurrence-set` serves it (RFC
/// 4791 §9.6.6): the master component whole, and only the overridden instances that
/// overlap `[start, end)`; everything else as it was. `None` if the text cannot be
/// read.
pub fn limit_recurrence_text(text: &str, start: i64, end: i64) -> Option<String> {
    let overlapping: std::collections::HashSet<u32> = occurrences_in(text, start, end)?
        .into_iter()
        .map(|(comp_id, _, _)| comp_id)
        .collect();
    let lines = lines::split(text);
    let (ranges, _) = top_components(&lines)?;
    // The overrides outside the range, by their first line.
    let mut dropped: Vec<(usize, usize)> = Vec::new();
    for (number, range) in ranges.iter().enumerate() {
        let Some((begin, finish)) = *range else {
            continue;
        };
        let mut depth = 0;
        let overrides = lines[begin + 1..finish].iter().any(|l| {
            match l.name().as_str() {
                "BEGIN" => depth += 1,
                "END" => depth -= 1,
                _ => {}
            }
            depth == 0 && l.is("RECURRENCE-ID")
        });
        if overrides && !overlapping.contains(&(number as u32)) {
            dropped.push((begin, finish));
        }
    }
    Some(
        lines
            .iter()
            .enumerate()
            .filter(|(i, _)| !dropped.iter().any(|(b, f)| (b..=f).contains(&i)))
            .map(|(_, l)| l.raw.as_str())
            .collect(),
    )
}

/// The calendar's own properties in a calendar object's text (`X-WR-CALNAME`,
/// `X-WR-TIMEZONE`, `NAME`, `COLOR`, …): the lines directly in `VCALENDAR` other than
/// those an export writes itself, each as (name, raw line).
pub fn calendar_properties(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut depth = 0;
    for line in lines::split(text) {
        let name = line.name();
        match name.as_str() {
            "BEGIN" => depth += 1,
            "END" => depth -= 1,
            "VERSION" | "PRODID" | "CALSCALE" | "METHOD" => {}
            _ if depth == 1 => out.push((name, line.raw.clone())),
            _ => {}
        }
    }
    out
}

/// The time zones (`VTIMEZONE`) and the components of an object other than the
/// calendar itself, as text, to gather many objects into one calendar file.
pub fn components_text(text: &str) -> (Vec<(String, String)>, String) {
    let lines = lines::split(text);
    let mut zones = Vec::new();
    let mut body = String::new();
    let mut depth = 0;
    let mut current: Option<(bool, String, String)> = None;
    for line in lines {
        let name = line.name();
        if name == "BEGIN" {
            depth += 1;
            if depth == 2 {
                let is_zone = line.value().trim().eq_ignore_ascii_case("VTIMEZONE");
                current = Some((is_zone, String::new(), String::new()));
            }
        }
        if let Some((is_zone, tzid, text)) = current.as_mut() {
            if *is_zone && name == "TZID" && depth == 2 {
                *tzid = line.value().trim().to_owned();
            }
            text.push_str(&line.raw);
        }
        if name == "END" {
            if depth == 2
                && let Some((is_zone, tzid, text)) = current.take()
            {
                if is_zone {
                    zones.push((tzid, text));
                } else {
                    body.push_str(&text);
                }
            }
            depth -= 1;
        }
    }
    (zones, body)
}
