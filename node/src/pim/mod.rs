//! Contacts and calendars: how vCard and iCalendar map onto records (docs/SCHEMA.md),
//! and importing and exporting whole files.
//!
//! In: collection names, records, vCard/iCalendar text. Out: records whose fields a
//! grant can name, each keeping its original text (`vcard`, `ical`) in step with its
//! fields. Parsing and writing values is `calcard`'s; this module decides which lines
//! change. A collection holds contacts if it is named `contacts` or `contacts-…`, and
//! calendar objects if `calendar` or `calendar-…`; other collections are plain records.

pub mod calendar;
pub mod contacts;
pub mod lines;

use std::collections::HashMap;

use hearth_protocol::{CollectionName, RecordId};
use serde_json::{Map, Value};

/// What a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Contacts,
    Calendar,
}

impl Kind {
    /// The kind of a collection, from its name.
    pub fn of(collection: &str) -> Option<Kind> {
        let is = |base: &str| {
            collection == base
                || collection
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.starts_with('-') && rest.len() > 1)
        };
        if is("contacts") {
            Some(Kind::Contacts)
        } else if is("calendar") {
            Some(Kind::Calendar)
        } else {
            None
        }
    }

    /// The field that holds the text.
    pub fn text_field(self) -> &'static str {
        match self {
            Kind::Contacts => contacts::VCARD,
            Kind::Calendar => calendar::ICAL,
        }
    }

    /// The fields made from the text.
    pub fn fields(self) -> &'static [&'static str] {
        match self {
            Kind::Contacts => contacts::FIELDS,
            Kind::Calendar => calendar::FIELDS,
        }
    }

    /// The media type of the text.
    pub fn media_type(self) -> &'static str {
        match self {
            Kind::Contacts => "text/vcard; charset=utf-8",
            Kind::Calendar => "text/calendar; charset=utf-8",
        }
    }

    /// The file extension of one object.
    pub fn extension(self) -> &'static str {
        match self {
            Kind::Contacts => "vcf",
            Kind::Calendar => "ics",
        }
    }

    fn object(self) -> &'static str {
        match self {
            Kind::Contacts => "VCARD",
            Kind::Calendar => "VCALENDAR",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PimError {
    #[error("{0}")]
    Split(#[from] lines::SplitError),
    #[error("entry {index} (line {line}): {reason}")]
    Entry {
        index: usize,
        line: usize,
        reason: String,
    },
    #[error("{0}")]
    Unreadable(String),
}

/// Brings a record of a contacts or calendar collection into step before it is
/// stored: if its text changed, the fields are read from the new text; else if fields
/// changed, the text is written anew from them (only the changed lines). A record
/// without a UID gets one. `before` is the record as stored (if any).
pub fn prepare(
    kind: Kind,
    before: Option<&Map<String, Value>>,
    record: &mut Map<String, Value>,
) -> Result<(), PimError> {
    let text_field = kind.text_field();
    let text_changed = record.get(text_field).is_some()
        && before.and_then(|b| b.get(text_field)) != record.get(text_field);
    if text_changed {
        let text = record
            .get(text_field)
            .and_then(Value::as_str)
            .ok_or_else(|| PimError::Unreadable(format!("{text_field} must be text")))?
            .to_owned();
        let fields = match kind {
            Kind::Contacts => contacts::fields(&contacts::parse(&text)?).0,
            Kind::Calendar => calendar::fields(&calendar::parse(&text)?),
        };
        for field in kind.fields() {
            // A photo kept as a blob is not in the text's fields: keep the reference.
            if *field == "photo" && record.get("photo").is_some_and(|p| p.get("blob").is_some()) {
                continue;
            }
            match fields.get(*field) {
                Some(value) => {
                    record.insert((*field).to_owned(), value.clone());
                }
                None => {
                    record.remove(*field);
                }
            }
        }
    } else {
        if kind == Kind::Contacts {
            let old = before.cloned().unwrap_or_default();
            contacts::settle(&old, record);
        }
        let unchanged =
            before.is_some_and(|b| kind.fields().iter().all(|f| b.get(*f) == record.get(*f)));
        if !unchanged || record.get(text_field).is_none() {
            if record.get("uid").is_none() {
                record.insert("uid".into(), Value::String(new_uid()));
            }
            let text = match kind {
                Kind::Contacts => contacts::render(record)?,
                Kind::Calendar => calendar::render(record)?,
            };
            record.insert(text_field.into(), Value::String(text));
        }
    }
    if record.get("uid").is_none() {
        // A text without a UID: give it one, in the text too.
        record.insert("uid".into(), Value::String(new_uid()));
        let text = match kind {
            Kind::Contacts => contacts::render(record)?,
            Kind::Calendar => calendar::render(record)?,
        };
        record.insert(text_field.into(), Value::String(text));
    }
    Ok(())
}

fn new_uid() -> String {
    let bytes: [u8; 16] = rand::random();
    let hex = data_encoding::HEXLOWER.encode(&bytes);
    format!(
        "{}-{}-4{}-a{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[13..16],
        &hex[17..20],
        &hex[20..32]
    )
}

/// The record id an imported object gets: its UID if that is a valid id, else a
/// name made from the UID (so a re-import finds it again).
pub fn id_for_uid(uid: &str) -> RecordId {
    if let Ok(id) = RecordId::parse(uid) {
        return id;
    }
    let hash = blake3::hash(uid.as_bytes());
    RecordId::from_random(hash.as_bytes()[..16].try_into().expect("16 bytes"))
}

/// One object read from a file, ready to store.
#[derive(Debug, Clone)]
pub struct Imported {
    pub uid: String,
    pub record: Map<String, Value>,
    /// A photo given inside a vCard, to store as a blob and name in `photo`.
    pub photo: Option<contacts::InlinePhoto>,
}

/// Something in a file that was left out, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Skipped {
    /// The entry's number in the file (1-based) and its first line.
    pub entry: usize,
    pub line: usize,
    pub reason: String,
}

/// Reads every object of a vCard or iCalendar file; all or nothing: the first entry
/// that cannot be read fails the whole file, naming the entry and its line.
pub fn read_file(kind: Kind, text: &str) -> Result<(Vec<Imported>, Vec<Skipped>), PimError> {
    let objects = lines::objects(text, kind.object())?;
    let mut out: Vec<Imported> = Vec::new();
    let mut skipped = Vec::new();
    let mut by_uid: HashMap<String, usize> = HashMap::new();
    let mut keep = |imported: Imported, entry: usize, line: usize, skipped: &mut Vec<Skipped>| {
        if let Some(at) = by_uid.get(&imported.uid) {
            skipped.push(Skipped {
                entry,
                line,
                reason: format!(
                    "another entry of this file has the same UID {:?}; the later one is kept",
                    imported.uid
                ),
            });
            out[*at] = imported;
        } else {
            by_uid.insert(imported.uid.clone(), out.len());
            out.push(imported);
        }
    };
    for object in objects {
        let text = object.text();
        let entry = |reason: String| PimError::Entry {
            index: object.index,
            line: object.first_line(),
            reason,
        };
        match kind {
            Kind::Contacts => {
                let card = contacts::parse(&text).map_err(|e| entry(e.to_string()))?;
                let (mut fields, photo) = contacts::fields(&card);
                let uid = match fields.get("uid").and_then(Value::as_str) {
                    Some(uid) => uid.to_owned(),
                    // No UID (Google's export has none): the content names it, so the
                    // same file imported again finds the same records.
                    None => format!("hearth-import-{}", blake3::hash(text.as_bytes()).to_hex()),
                };
                fields.insert("uid".into(), Value::String(uid.clone()));
                fields.insert(contacts::VCARD.into(), Value::String(text));
                keep(
                    Imported {
                        uid,
                        record: fields,
                        photo,
                    },
                    object.index,
                    object.first_line(),
                    &mut skipped,
                );
            }
            Kind::Calendar => {
                for (uid, object_text) in split_calendar(&object)? {
                    let ical = calendar::parse(&object_text).map_err(|e| entry(e.to_string()))?;
                    let mut fields = calendar::fields(&ical);
                    if !fields.contains_key("kind") {
                        skipped.push(Skipped {
                            entry: object.index,
                            line: object.first_line(),
                            reason: format!("UID {uid:?} holds no event or task"),
                        });
                        continue;
                    }
                    fields.insert("uid".into(), Value::String(uid.clone()));
                    fields.insert(calendar::ICAL.into(), Value::String(object_text));
                    keep(
                        Imported {
                            uid,
                            record: fields,
                            photo: None,
                        },
                        object.index,
                        object.first_line(),
                        &mut skipped,
                    );
                }
            }
        }
    }
    Ok((out, skipped))
}

/// Cuts one `VCALENDAR` of many events into one calendar object per UID, each with the
/// calendar's own properties and the time zones it uses.
fn split_calendar(object: &lines::Object) -> Result<Vec<(String, String)>, PimError> {
    let mut header = String::new();
    let mut zones: Vec<(String, String)> = Vec::new();
    let mut groups: Vec<(String, String)> = Vec::new();
    let mut depth = 0;
    let mut current: Option<(String, String, Option<String>, usize)> = None;
    for line in &object.lines {
        let name = line.name();
        if name == "BEGIN" {
            depth += 1;
            if depth == 2 {
                current = Some((
                    line.value().trim().to_ascii_uppercase(),
                    String::new(),
                    None,
                    line.number,
                ));
            }
        }
        match current.as_mut() {
            Some((_, text, uid, _)) => {
                if depth == 2 && name == "UID" {
                    *uid = Some(line.value().trim().to_owned());
                }
                if depth == 2 && name == "TZID" && uid.is_none() {
                    *uid = Some(format!("tz:{}", line.value().trim()));
                }
                text.push_str(&line.raw);
            }
            None if depth == 1 && name != "BEGIN" && name != "END" => header.push_str(&line.raw),
            None => {}
        }
        if name == "END" {
            if depth == 2 {
                if let Some((kind, text, uid, number)) = current.take() {
                    match (kind.as_str(), uid) {
                        ("VTIMEZONE", Some(tzid)) => {
                            zones.push((tzid.trim_start_matches("tz:").to_owned(), text));
                        }
                        (_, Some(uid)) => match groups.iter_mut().find(|(u, _)| *u == uid) {
                            Some((_, body)) => body.push_str(&text),
                            None => groups.push((uid, text)),
                        },
                        (kind, None) if kind == "VTIMEZONE" => {}
                        (kind, None) => {
                            return Err(PimError::Entry {
                                index: object.index,
                                line: number,
                                reason: format!("a {kind} without a UID"),
                            });
                        }
                    }
                }
            }
            depth -= 1;
        }
    }
    Ok(groups
        .into_iter()
        .map(|(uid, body)| {
            let mut text = String::from("BEGIN:VCALENDAR\r\n");
            text.push_str(&header);
            for (tzid, zone) in &zones {
                if body.contains(&format!("TZID={tzid}"))
                    || body.contains(&format!("TZID=\"{tzid}\""))
                {
                    text.push_str(zone);
                }
            }
            text.push_str(&body);
            text.push_str("END:VCALENDAR\r\n");
            (uid, text)
        })
        .collect())
}

/// The text of a record of `kind` (stored, or written from its fields).
pub fn text_of(kind: Kind, record: &Map<String, Value>) -> Result<String, PimError> {
    match record.get(kind.text_field()).and_then(Value::as_str) {
        Some(text) => Ok(text.to_owned()),
        None => match kind {
            Kind::Contacts => contacts::render(record),
            Kind::Calendar => calendar::render(record),
        },
    }
}

/// One file of many records: vCards one after the other, or one calendar with every
/// event and task and each time zone once.
pub fn export(kind: Kind, records: &[Map<String, Value>]) -> Result<String, PimError> {
    let mut out = String::new();
    match kind {
        Kind::Contacts => {
            for record in records {
                out.push_str(&text_of(kind, record)?);
            }
        }
        Kind::Calendar => {
            let mut zones: Vec<(String, String)> = Vec::new();
            let mut body = String::new();
            for record in records {
                let (record_zones, components) = calendar::components_text(&text_of(kind, record)?);
                for (tzid, zone) in record_zones {
                    if !zones.iter().any(|(t, _)| *t == tzid) {
                        zones.push((tzid, zone));
                    }
                }
                body.push_str(&components);
            }
            out.push_str("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Hearth//Hearth//EN\r\nCALSCALE:GREGORIAN\r\n");
            for (_, zone) in zones {
                out.push_str(&zone);
            }
            out.push_str(&body);
            out.push_str("END:VCALENDAR\r\n");
        }
    }
    Ok(out)
}

/// The collection of `kind` that imports and exports go to by default.
pub fn default_collection(kind: Kind) -> CollectionName {
    CollectionName::parse(match kind {
        Kind::Contacts => "contacts",
        Kind::Calendar => "calendar",
    })
    .expect("valid collection names")
}
