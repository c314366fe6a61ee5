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
/// stored: if its text changed, the fields are read from the new text; else the text
/// is written anew from the fields (only the lines of fields that differ from what the
/// text says change). A record without a UID gets one. `before` is the record as
/// stored (if any).
pub fn prepare(
    kind: Kind,
    before: Option<&Map<String, Value>>,
    record: &mut Map<String, Value>,
) -> Result<(), PimError> {
    let text_field = kind.text_field();
    // A record without text is a plain record: its text is made when it is asked for
    // (export, DAV), not kept.
    let Some(text) = record.get(text_field) else {
        if kind == Kind::Contacts {
            // A changed `email` moves into `emails` if the record has the list, or the
            // text made from it later would bring the old address back.
            let old = before.cloned().unwrap_or_default();
            contacts::settle(&old, record, false);
        }
        return Ok(());
    };
    let text = text
        .as_str()
        .ok_or_else(|| PimError::Unreadable(format!("{text_field} must be text")))?
        .to_owned();
    let text_changed = before.and_then(|b| b.get(text_field)) != record.get(text_field);
    if text_changed {
        // A new text is one object as the lines are cut (what a DAV PUT and an import
        // require too): a text calcard reads past a broken nesting or a second object
        // would get its new lines (a UID) where its fields were not read from.
        let objects = lines::objects(&text, kind.object())?.len();
        if objects != 1 {
            return Err(PimError::Unreadable(format!(
                "the text holds {objects} {} objects; a record holds one",
                kind.object()
            )));
        }
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
    } else if kind == Kind::Contacts {
        let old = before.cloned().unwrap_or_default();
        contacts::settle(&old, record, true);
    }
    if record.get("uid").is_none() {
        // A new text without a UID keeps the record's identity.
        let uid = before
            .and_then(|b| b.get("uid"))
            .filter(|u| u.is_string())
            .cloned()
            .unwrap_or_else(|| Value::String(new_uid()));
        record.insert("uid".into(), uid);
    }
    // Written anew from the fields: lines whose field did not change stay as they are,
    // so an unchanged record keeps its text byte for byte.
    let text = match kind {
        Kind::Contacts => contacts::render(record)?,
        Kind::Calendar => calendar::render(record)?,
    };
    if kind == Kind::Calendar && !text_changed {
        // `kind`, `all_day` and `overrides` are what the text says, whatever was written.
        let fields = calendar::fields(&calendar::parse(&text)?);
        for field in calendar::DERIVED {
            match fields.get(*field) {
                Some(value) => record.insert((*field).to_owned(), value.clone()),
                None => record.remove(*field),
            };
        }
    }
    record.insert(text_field.into(), Value::String(text));
    Ok(())
}

pub(crate) fn new_uid() -> String {
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
    /// For an entry without a UID: the UID an earlier version made for it
    /// (`hearth-import-<hash>`), so that importing the file again still finds the
    /// record it made then.
    pub made_before: Option<String>,
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
/// that cannot be read, or whose text is longer than `max_entry_bytes` (the limit of
/// one record written by a `PUT`), fails the whole file, naming the entry, its line
/// and its UID.
pub fn read_file(
    kind: Kind,
    text: &str,
    max_entry_bytes: usize,
) -> Result<(Vec<Imported>, Vec<Skipped>), PimError> {
    if let Some(other) = other_kind(kind, text) {
        return Err(PimError::Unreadable(other));
    }
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
        let too_long = |text: &str| {
            entry(format!(
                "the entry{} is {} bytes, more than the {max_entry_bytes} bytes one record may hold",
                uid_line(text).map_or(String::new(), |uid| format!(" with UID {uid:?}")),
                text.len()
            ))
        };
        match kind {
            Kind::Contacts => {
                // Checked before it is parsed: a huge card costs no memory beyond its text.
                if text.len() > max_entry_bytes {
                    return Err(too_long(&text));
                }
                let card = contacts::parse(&text).map_err(|e| entry(e.to_string()))?;
                let (mut fields, photo) = contacts::fields(&card);
                let (uid, made_before) = match fields.get("uid").and_then(Value::as_str) {
                    Some(uid) => (uid.to_owned(), None),
                    // No UID (Google's export has none): the name and the content name
                    // it (`grace-hopper-3f2a9c1e77`), so the same file imported again
                    // finds the same records, and the id reads as who it is.
                    None => {
                        let hash = blake3::hash(text.as_bytes()).to_hex();
                        let name = fields.get("name").and_then(Value::as_str).unwrap_or("");
                        let slug = readable(name);
                        let uid = if slug.is_empty() {
                            format!("contact-{}", &hash[..16])
                        } else {
                            format!("{slug}-{}", &hash[..10])
                        };
                        (uid, Some(format!("hearth-import-{hash}")))
                    }
                };
                fields.insert("uid".into(), Value::String(uid.clone()));
                fields.insert(contacts::VCARD.into(), Value::String(text));
                keep(
                    Imported {
                        uid,
                        made_before,
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
                    if object_text.len() > max_entry_bytes {
                        return Err(too_long(&object_text));
                    }
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
                            made_before: None,
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

/// A name as a piece of a record id: letters without their accents, digits, `-`
/// (`José Martínez` → `jose-martinez`), at most 40 characters.
pub(crate) fn readable(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    let mut out = String::new();
    for c in name.nfd().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if (c.is_whitespace() || c.is_ascii_punctuation()) && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= 40 {
            break;
        }
    }
    out.trim_matches('-').to_owned()
}

/// The text of an imported vCard or iCalendar file: UTF-8 (a byte-order mark dropped),
/// UTF-16 with a byte-order mark (Outlook writes it), or 8-bit text whose lines say
/// their character set (old Outlook and Nokia vCards: `FN;CHARSET=ISO-8859-1:José`):
/// each line that is not UTF-8 is read with its own CHARSET, a line that names none
/// (a folded continuation, an address) with the one named last, and text that names
/// none at all is refused with the command that converts it.
pub fn decode_file(bytes: &[u8]) -> Result<String, String> {
    if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
        return decode_file(rest);
    }
    for (bom, encoding) in [
        (&b"\xFF\xFE"[..], encoding_rs::UTF_16LE),
        (&b"\xFE\xFF"[..], encoding_rs::UTF_16BE),
    ] {
        if let Some(rest) = bytes.strip_prefix(bom) {
            let (text, malformed) = encoding.decode_without_bom_handling(rest);
            if malformed {
                return Err(format!(
                    "the file starts as {} text but is not: save it again as UTF-8",
                    encoding.name()
                ));
            }
            return Ok(text.into_owned());
        }
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Ok(text.to_owned());
    }
    let charset_of = |line: &[u8]| -> Option<&'static encoding_rs::Encoding> {
        let head_end = line.iter().position(|b| *b == b':').unwrap_or(line.len());
        let head = line[..head_end].to_ascii_uppercase();
        let at = head.windows(8).position(|w| w == b"CHARSET=")? + 8;
        let label: Vec<u8> = head[at..]
            .iter()
            .copied()
            .take_while(|b| *b != b';' && *b != b':')
            .filter(|b| *b != b'"')
            .collect();
        encoding_rs::Encoding::for_label(&label)
    };
    let mut out = String::with_capacity(bytes.len() + bytes.len() / 8);
    let mut current: Option<&'static encoding_rs::Encoding> = None;
    for (index, line) in bytes.split_inclusive(|b| *b == b'\n').enumerate() {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation && let Some(named) = charset_of(line) {
            current = Some(named);
        }
        match std::str::from_utf8(line) {
            Ok(text) => out.push_str(text),
            Err(_) => {
                let Some(encoding) = current else {
                    return Err(format!(
                        "the file is not UTF-8 text (line {}) and does not say its character set: convert it first, e.g. `iconv -f WINDOWS-1252 -t UTF-8 FILE > FILE-utf8` (or the encoding it was written in), and import that",
                        index + 1
                    ));
                };
                out.push_str(&encoding.decode_without_bom_handling(line).0);
            }
        }
    }
    Ok(out)
}

/// What a file given as the wrong kind is, and the command that reads it: a calendar
/// given to `import contacts`, contacts to `import calendar`, a mailbox to either.
/// `None` if it starts as `kind` does (or as nothing known: the parser then says what
/// is wrong).
fn other_kind(kind: Kind, text: &str) -> Option<String> {
    let first = text
        .trim_start_matches('\u{feff}')
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())?;
    let begins = |what: &str| {
        first
            .get(..6 + what.len())
            .is_some_and(|h| h.eq_ignore_ascii_case(&format!("BEGIN:{what}")))
    };
    let (is, command) = if begins("VCALENDAR") {
        ("iCalendar (a calendar)", "hearth import calendar")
    } else if begins("VCARD") {
        ("vCard (contacts)", "hearth import contacts")
    } else if first.starts_with("From ") {
        ("an mbox mailbox", "hearth import mail")
    } else {
        return None;
    };
    let wanted = match kind {
        Kind::Contacts => "vCard (contacts)",
        Kind::Calendar => "iCalendar (a calendar)",
    };
    (is != wanted).then(|| format!("this file is {is}, not {wanted}: use `{command} FILE`"))
}

/// Cuts one `VCALENDAR` of many events into one calendar object per UID, each with the
/// calendar's own properties and the time zones it uses.
pub(crate) fn split_calendar(object: &lines::Object) -> Result<Vec<(String, String)>, PimError> {
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
            if depth == 2
                && let Some((kind, text, uid, number)) = current.take()
            {
                match (kind.as_str(), uid) {
                    ("VTIMEZONE", Some(tzid)) => {
                        zones.push((tzid.trim_start_matches("tz:").to_owned(), text));
                    }
                    (_, Some(uid)) => match groups.iter_mut().find(|(u, _)| *u == uid) {
                        Some((_, body)) => body.push_str(&text),
                        None => groups.push((uid, text)),
                    },
                    ("VTIMEZONE", None) => {}
                    (kind, None) => {
                        return Err(PimError::Entry {
                            index: object.index,
                            line: number,
                            reason: format!("a {kind} without a UID"),
                        });
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

/// The text of record `id` of `kind`: stored, or written from its fields (a record
/// without a UID is given one made from its id, the same every time).
pub fn text_of(kind: Kind, id: &str, record: &Map<String, Value>) -> Result<String, PimError> {
    if let Some(text) = record.get(kind.text_field()).and_then(Value::as_str) {
        return Ok(text.to_owned());
    }
    let mut record = record.clone();
    if record.get("uid").is_none() {
        record.insert("uid".into(), Value::String(format!("hearth-{id}")));
    }
    if kind == Kind::Contacts {
        // A plain record may have only `email`/`phone`: the lists the text is written
        // from follow them.
        contacts::settle(&Map::new(), &mut record, true);
    }
    match kind {
        Kind::Contacts => contacts::render(&record),
        Kind::Calendar => calendar::render(&record),
    }
}

/// One file of many records: vCards one after the other, or one calendar with every
/// event and task and each time zone once.
pub fn export(kind: Kind, records: &[(String, Map<String, Value>)]) -> Result<String, PimError> {
    let mut out = String::new();
    match kind {
        Kind::Contacts => {
            for (id, record) in records {
                out.push_str(&text_of(kind, id, record)?);
            }
        }
        Kind::Calendar => {
            let mut zones: Vec<(String, String)> = Vec::new();
            let mut header: Vec<(String, String)> = Vec::new();
            let mut body = String::new();
            for (id, record) in records {
                let text = text_of(kind, id, record)?;
                // The calendar's name and zone (`X-WR-CALNAME`, `X-WR-TIMEZONE`, …)
                // that its file came with: the first record's that has each.
                for (name, line) in calendar::calendar_properties(&text) {
                    if !header.iter().any(|(n, _)| *n == name) {
                        header.push((name, line));
                    }
                }
                let (record_zones, components) = calendar::components_text(&text);
                for (tzid, zone) in record_zones {
                    if !zones.iter().any(|(t, _)| *t == tzid) {
                        zones.push((tzid, zone));
                    }
                }
                body.push_str(&components);
            }
            out.push_str("BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//Hearth//Hearth//EN\r\nCALSCALE:GREGORIAN\r\n");
            for (_, line) in header {
                out.push_str(&line);
                if !line.ends_with('\n') {
                    out.push_str("\r\n");
                }
            }
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

/// What the owner asks of one record.
#[derive(Debug, Clone)]
pub enum Change {
    /// Make the record exactly this (created if missing).
    Replace(Map<String, Value>),
    /// Merge this patch (RFC 7396) into the existing record.
    Merge(Map<String, Value>),
    /// The record's vCard or iCalendar text was edited in place (character edits):
    /// its fields are read again from the text.
    TextEdited,
}

/// Why an owner's write did nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WriteError {
    #[error("no such record")]
    Missing,
    /// A text edit that does not apply (out of range, or not a text field).
    #[error("{0}")]
    BadEdit(String),
    #[error(transparent)]
    Pim(#[from] PimError),
    #[error(transparent)]
    Collection(#[from] crate::collections::CollectionError),
}

/// The owner's write of one record: for a contacts or calendar collection, its text and
/// fields are kept in step (see [`prepare`]), under the collection's lock, persisted
/// together with the other writes to the collection waiting at the same moment
/// ([`Collections::write_combined`](crate::collections::Collections::write_combined)).
/// Returns whether the record existed and the record now. Durable only after the store
/// commits.
pub async fn owner_write(
    collections: &std::sync::Arc<crate::collections::Collections>,
    name: &CollectionName,
    id: &RecordId,
    change: Change,
) -> Result<(bool, Map<String, Value>), WriteError> {
    let kind = Kind::of(name.as_str());
    collections
        .write_combined(name, id, move |before| decide(kind, &change, before))
        .await?
}

/// A person's merge of a record's versions, written as its only version (its text and
/// fields in step, as any owner's write), with the end of its delete notice, in one
/// write: there is no moment where the merge is written and the versions or the
/// notice still stand. Durable only after the store commits.
pub async fn owner_merge_versions(
    collections: &std::sync::Arc<crate::collections::Collections>,
    name: &CollectionName,
    id: &RecordId,
    record: Map<String, Value>,
) -> Result<(), WriteError> {
    let kind = Kind::of(name.as_str());
    let (collections, name, id) = (collections.clone(), name.clone(), id.clone());
    let found = tokio::task::spawn_blocking(move || {
        collections.merge_versions(&name, &id, |before| {
            let (_, after) = decide(kind, &Change::Replace(record), Some(before))?;
            Ok::<_, WriteError>(after)
        })
    })
    .await
    .map_err(|e| failed_inside("merge", e))???;
    if !found {
        return Err(WriteError::Missing);
    }
    Ok(())
}

/// Records restored from an export (`hearth import --all`), as one write: a record the
/// collection lacks is created (a contact or event with its text and fields in step, as
/// any owner's write); one it holds as given is left; one it holds otherwise is left as
/// it is and named in the report, so a restore never overwrites what the vault has. All
/// or nothing: a record that cannot be written (a text that does not read, an id twice)
/// refuses the batch, naming the record. Durable only after the store commits.
pub async fn owner_restore(
    collections: &std::sync::Arc<crate::collections::Collections>,
    name: &CollectionName,
    records: Vec<(RecordId, Map<String, Value>)>,
) -> Result<hearth_protocol::api::RestoreReport, WriteError> {
    use crate::collections::RecordWrite;
    let kind = Kind::of(name.as_str());
    let (collections, name) = (collections.clone(), name.clone());
    tokio::task::spawn_blocking(move || {
        let touching: Vec<_> = records
            .iter()
            .map(|(id, _)| (name.clone(), id.clone()))
            .collect();
        collections.write_across(&touching, |lookup| {
            let mut report = hearth_protocol::api::RestoreReport::default();
            let mut writes: crate::collections::WritesIn = Vec::new();
            let mut seen = std::collections::HashSet::new();
            for (id, mut record) in records {
                if !seen.insert(id.clone()) {
                    return Err(WriteError::BadEdit(format!(
                        "record {id} is given twice in one batch"
                    )));
                }
                record.remove("id");
                let before = lookup(&name, &id)?.map(|mut before| {
                    before.remove("id");
                    before
                });
                let named = |e: WriteError| match e {
                    WriteError::Pim(e) => WriteError::BadEdit(format!("record {id}: {e}")),
                    e => e,
                };
                let (_, after) =
                    decide(kind, &Change::Replace(record), before.as_ref()).map_err(named)?;
                match before {
                    None => {
                        report.created += 1;
                        writes.push((name.clone(), id, RecordWrite::Put(after)));
                    }
                    Some(before) if before == after => report.unchanged += 1,
                    Some(_) => report.differing.push(id.to_string()),
                }
            }
            Ok::<_, WriteError>((writes, report))
        })?
    })
    .await
    .map_err(|e| failed_inside("restore", e))?
}

/// A write whose job on the blocking pool failed (a panic): nothing of it was written.
fn failed_inside(what: &str, e: tokio::task::JoinError) -> WriteError {
    WriteError::Collection(crate::collections::CollectionError::Shared {
        code: hearth_protocol::api::ErrorCode::Internal,
        message: format!("the {what} failed inside the node; nothing was written: {e}"),
    })
}

/// The owner's edit of text field `field` of a contacts or calendar record, and the
/// step that keeps its text and fields in step (the fields follow an edit of the vCard
/// or iCalendar text; the text follows an edit of another text field), as one write:
/// an edit that leaves the text unreadable is refused and nothing of it is kept.
/// Returns the record now. Durable only after the store commits.
pub async fn owner_edit_text(
    collections: &std::sync::Arc<crate::collections::Collections>,
    name: &CollectionName,
    id: &RecordId,
    kind: Kind,
    field: String,
    edits: Vec<crate::records::TextEdit>,
) -> Result<Map<String, Value>, WriteError> {
    use crate::collections::EditRefused;
    let change = if field == kind.text_field() {
        Change::TextEdited
    } else {
        Change::Merge(Map::new())
    };
    let written = collections
        .edit_text_combined(name, id, field, edits, move |before| {
            decide(Some(kind), &change, before)
        })
        .await?;
    match written {
        Ok((_, after)) => Ok(after),
        Err(EditRefused::Missing) => Err(WriteError::Missing),
        Err(EditRefused::Edit(e)) => Err(WriteError::BadEdit(e)),
        Err(EditRefused::Decided(e)) => Err(e),
    }
}

/// What the owner's `change` writes to a record that is `before` (see [`owner_write`]),
/// and the record after it.
fn decide(
    kind: Option<Kind>,
    change: &Change,
    before: Option<&Map<String, Value>>,
) -> Result<(crate::collections::RecordWrite, Map<String, Value>), WriteError> {
    use crate::collections::RecordWrite;
    let mut after = match (change, before) {
        (Change::Replace(record), _) => record.clone(),
        (Change::Merge(patch), Some(before)) => {
            let mut after = before.clone();
            hearth_protocol::scope::merge_patch(&mut after, patch);
            after
        }
        (Change::TextEdited, Some(before)) => before.clone(),
        (Change::Merge(_) | Change::TextEdited, None) => return Err(WriteError::Missing),
    };
    after.remove("id");
    if let Some(kind) = kind {
        match (change, before) {
            // The text already holds the edit: prepare as if it had just been
            // written, so the fields follow the text (and not the other way round).
            (Change::TextEdited, Some(before)) => {
                let mut without_text = before.clone();
                without_text.remove(kind.text_field());
                prepare(kind, Some(&without_text), &mut after)?;
            }
            _ => prepare(kind, before, &mut after)?,
        }
    }
    let write = match (before, change) {
        // Only what differs is written: an unchanged field must not win a merge
        // with another device it took no part in.
        (Some(before), _) if kind.is_some() => {
            RecordWrite::Patch(hearth_protocol::scope::diff_patch(before, &after))
        }
        (_, Change::Merge(patch)) => RecordWrite::Patch(patch.clone()),
        (_, Change::Replace(_) | Change::TextEdited) => RecordWrite::Put(after.clone()),
    };
    Ok((write, after))
}

/// The value of an object's first `UID` line (unfolded lines only; at most 80
/// characters), to name an entry in an error without parsing it.
fn uid_line(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.split(';').next()?;
        name.trim()
            .eq_ignore_ascii_case("UID")
            .then(|| value.trim().chars().take(80).collect())
    })
}

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    /// New records.
    pub imported: u64,
    /// Records that were there (same UID) and changed.
    pub updated: u64,
    /// Records that were there and are the same.
    pub unchanged: u64,
    /// Entries left out, and why.
    pub skipped: Vec<Skipped>,
}

/// Imports a vCard or iCalendar file into a collection, all or nothing: every entry
/// is read before anything is written, then all records are written as one change.
/// An entry whose UID a record already has updates that record (its other fields
/// stay); the others become new records. Photos given inside vCards become blobs.
pub async fn import(
    vault: &crate::Vault,
    collection: &CollectionName,
    kind: Kind,
    text: &str,
) -> Result<ImportReport, ImportError> {
    use crate::collections::RecordWrite;
    let (entries, skipped) = read_file(kind, text, vault.limits.max_record_bytes)?;
    let mut photos = HashMap::new();
    // Each photo stays pinned (safe from blob garbage collection) until it is listed,
    // and is listed (which makes every device fetch it) in the same write as the
    // records naming it: an import refused at its write announces nothing.
    let mut pins = Vec::new();
    let mut to_announce = Vec::new();
    for entry in &entries {
        if let Some(photo) = &entry.photo {
            let bytes = bytes::Bytes::from(photo.bytes.clone());
            let stream = futures::stream::iter([Ok::<_, std::convert::Infallible>(bytes)]);
            let stored = vault.blobs.put(stream, vault.limits.max_blob_bytes).await?;
            let described =
                crate::blobs::Described::new(None, Some(&photo.media_type)).unwrap_or_default();
            to_announce.push((stored.id, stored.size, described));
            photos.insert(
                entry.uid.clone(),
                (stored.id.to_string(), photo.media_type.clone()),
            );
            pins.push(stored.pinned);
        }
    }
    let existing: Vec<Value> = vault.collections.records(collection)?;
    let mut by_uid: HashMap<String, (String, Map<String, Value>)> = HashMap::new();
    let mut taken = std::collections::HashSet::new();
    for record in existing {
        let Value::Object(mut record) = record else {
            continue;
        };
        let Some(Value::String(id)) = record.remove("id") else {
            continue;
        };
        taken.insert(id.clone());
        if let Some(uid) = record.get("uid").and_then(Value::as_str) {
            by_uid.insert(uid.to_owned(), (id, record));
        }
    }
    let mut report = ImportReport {
        skipped,
        ..ImportReport::default()
    };
    let mut writes = Vec::new();
    for entry in entries {
        let mut fields = entry.record;
        if let Some((blob, media_type)) = photos.get(&entry.uid) {
            fields.insert(
                "photo".into(),
                serde_json::json!({ "blob": blob, "media_type": media_type }),
            );
        }
        // An entry whose UID an earlier version made differently keeps that record,
        // and its UID.
        let found = match by_uid.get(&entry.uid) {
            Some(found) => Some(found),
            None => match entry
                .made_before
                .as_ref()
                .and_then(|b| Some((b, by_uid.get(b)?)))
            {
                Some((before, found)) => {
                    fields.insert("uid".into(), Value::String(before.clone()));
                    Some(found)
                }
                None => None,
            },
        };
        match found {
            Some((id, before)) => {
                let mut after = before.clone();
                for field in kind.fields() {
                    after.remove(*field);
                }
                after.extend(fields);
                if after == *before {
                    report.unchanged += 1;
                    continue;
                }
                report.updated += 1;
                let id = RecordId::parse(id).map_err(|e| ImportError::Internal(e.to_string()))?;
                writes.push((
                    id,
                    RecordWrite::Patch(hearth_protocol::scope::diff_patch(before, &after)),
                ));
            }
            None => {
                let mut id = id_for_uid(&entry.uid);
                if taken.contains(id.as_str()) {
                    let bytes: [u8; 16] = rand::random();
                    id = RecordId::from_random(bytes);
                }
                taken.insert(id.to_string());
                report.imported += 1;
                writes.push((id, RecordWrite::Put(fields)));
            }
        }
    }
    // The records and the listing of their photos are one write, on the blocking pool:
    // on disk together, or (a refused write, a crash) neither.
    let collections = vault.collections.clone();
    let name = collection.clone();
    tokio::task::spawn_blocking(move || {
        let mut touching = crate::blobs::listings_of(&to_announce);
        touching.extend(writes.iter().map(|(id, _)| (name.clone(), id.clone())));
        collections.write_across(&touching, |lookup| {
            let mut writes: crate::collections::WritesIn = writes
                .into_iter()
                .map(|(id, write)| (name.clone(), id, write))
                .collect();
            let listings = crate::blobs::listing_writes(lookup, &to_announce, &writes)?;
            writes.extend(listings);
            Ok::<_, ImportError>((writes, ()))
        })?
    })
    .await
    .map_err(|e| ImportError::Internal(e.to_string()))??;
    vault.store.commit().await?;
    drop(pins);
    Ok(report)
}

/// Why an import wrote nothing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Read(#[from] PimError),
    #[error(transparent)]
    Collection(#[from] crate::collections::CollectionError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error("{0}")]
    Internal(String),
}

#[cfg(test)]
mod prepare_tests {
    use super::*;

    #[test]
    fn a_text_without_uid_gets_one_in_fields_and_text() {
        let text =
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Alan Turing\r\nN:Turing;Alan;;;\r\nEND:VCARD\r\n";
        let mut record = Map::new();
        record.insert("vcard".into(), Value::String(text.into()));
        prepare(Kind::Contacts, None, &mut record).unwrap();
        let uid = record["uid"].as_str().unwrap().to_owned();
        let text = record["vcard"].as_str().unwrap();
        assert!(text.contains(&format!("UID:{uid}")), "{text}");
    }

    /// Found by the `vcard` fuzz target: a text of two cards (or one whose nesting
    /// calcard reads past) was stored with the fields of the first and the UID it was
    /// given written into the second.
    #[test]
    fn a_text_of_two_cards_or_an_unterminated_one_is_refused() {
        let one = "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Grace Hopper\r\nEND:VCARD\r\n";
        let mut record = Map::new();
        record.insert("vcard".into(), Value::String(format!("{one}{one}")));
        assert!(matches!(
            prepare(Kind::Contacts, None, &mut record),
            Err(PimError::Unreadable(_))
        ));
        let unterminated = one.replace("END:VCARD\r\n", "BEGIN:VCARD\r\nUID:u-2\r\n");
        let mut record = Map::new();
        record.insert("vcard".into(), Value::String(unterminated));
        assert!(matches!(
            prepare(Kind::Contacts, None, &mut record),
            Err(PimError::Split(_))
        ));
        let mut record = Map::new();
        record.insert("vcard".into(), Value::String(format!("{one}\r\n")));
        prepare(Kind::Contacts, None, &mut record).unwrap();
        let uid = record["uid"].as_str().unwrap().to_owned();
        assert!(
            record["vcard"]
                .as_str()
                .unwrap()
                .contains(&format!("UID:{uid}"))
        );
    }

    /// `kind`, `all_day` and `overrides` follow the text; a new text without a UID
    /// keeps the record's.
    #[test]
    fn read_only_calendar_fields_follow_the_text_and_a_uid_is_kept() {
        let text = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:e-1\r\nDTSTAMP:20260101T000000Z\r\nDTSTART;VALUE=DATE:20261203\r\nSUMMARY:Holiday\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
        let mut before = Map::new();
        before.insert("ical".into(), Value::String(text.into()));
        prepare(Kind::Calendar, None, &mut before).unwrap();
        assert_eq!(before["kind"], "event");
        assert_eq!(before["all_day"], true);
        let mut after = before.clone();
        after.insert("kind".into(), Value::String("task".into()));
        after.insert("all_day".into(), Value::Bool(false));
        after.insert("summary".into(), Value::String("Long holiday".into()));
        prepare(Kind::Calendar, Some(&before), &mut after).unwrap();
        assert_eq!(after["kind"], "event", "{after:?}");
        assert_eq!(after["all_day"], true, "{after:?}");
        assert_eq!(after["summary"], "Long holiday");
        assert!(
            after["ical"]
                .as_str()
                .unwrap()
                .contains("SUMMARY:Long holiday\r\n")
        );

        // A card re-written without its UID keeps the record's.
        let mut card = Map::new();
        card.insert(
            "vcard".into(),
            Value::String(
                "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:c-1\r\nFN:Ada\r\nEND:VCARD\r\n".into(),
            ),
        );
        prepare(Kind::Contacts, None, &mut card).unwrap();
        let mut again = card.clone();
        again.insert(
            "vcard".into(),
            Value::String("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Ada King\r\nEND:VCARD\r\n".into()),
        );
        prepare(Kind::Contacts, Some(&card), &mut again).unwrap();
        assert_eq!(again["uid"], "c-1", "{again:?}");
        assert!(again["vcard"].as_str().unwrap().contains("UID:c-1"));
    }

    /// Character edits of the vCard text change the fields it holds (and stay in the
    /// text); edits of another text field change the text's lines.
    #[tokio::test]
    async fn the_fields_follow_an_edit_of_the_text_and_the_text_follows_other_fields() {
        use crate::collections::Collections;
        use crate::records::TextEdit;
        let vault = crate::testutil::TestVault::new();
        let c = std::sync::Arc::new(Collections::open(vault.store.clone(), [1; 16]).unwrap());
        let contacts = CollectionName::parse("contacts").unwrap();
        let id = RecordId::parse("alan").unwrap();
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:u-alan\r\nFN:Alan Turing\r\nN:Turing;Alan;;;\r\nNOTE:Bletchley\r\nX-VENDOR:kept\r\nEND:VCARD\r\n";
        let mut record = Map::new();
        record.insert("vcard".into(), Value::String(text.into()));
        owner_write(&c, &contacts, &id, Change::Replace(record))
            .await
            .unwrap();
        let stored = c.get(&contacts, &id).unwrap().unwrap();
        assert_eq!(stored["name"], "Alan Turing");

        // "Alan Turing" -> "Alan M. Turing" inside the text.
        let at = text.find("FN:Alan ").unwrap() + "FN:Alan ".len();
        let edit = TextEdit {
            position: at,
            delete: 0,
            insert: "M. ".into(),
        };
        owner_edit_text(
            &c,
            &contacts,
            &id,
            Kind::Contacts,
            "vcard".into(),
            vec![edit],
        )
        .await
        .unwrap();
        let stored = c.get(&contacts, &id).unwrap().unwrap();
        assert_eq!(stored["name"], "Alan M. Turing", "{stored:?}");
        let vcard = stored["vcard"].as_str().unwrap();
        assert!(vcard.contains("FN:Alan M. Turing\r\n"), "{vcard}");
        assert!(vcard.contains("X-VENDOR:kept\r\n"), "{vcard}");

        // An edit of the `notes` field: the NOTE line follows.
        let edit = TextEdit {
            position: 0,
            delete: 0,
            insert: "At ".into(),
        };
        owner_edit_text(
            &c,
            &contacts,
            &id,
            Kind::Contacts,
            "notes".into(),
            vec![edit],
        )
        .await
        .unwrap();
        let stored = c.get(&contacts, &id).unwrap().unwrap();
        assert_eq!(stored["notes"], "At Bletchley", "{stored:?}");
        let vcard = stored["vcard"].as_str().unwrap();
        assert!(vcard.contains("NOTE:At Bletchley\r\n"), "{vcard}");
        assert!(vcard.contains("FN:Alan M. Turing\r\n"), "{vcard}");

        // An edit that breaks the card (its END line cut) is refused whole: the text,
        // the fields and the collection's change log are as they were.
        let logged = c.log_position(&contacts).unwrap();
        let end = vcard.find("END:VCARD").unwrap();
        let cut = TextEdit {
            position: vcard[..end].chars().count(),
            delete: "END:VCARD".len(),
            insert: String::new(),
        };
        let refused = owner_edit_text(
            &c,
            &contacts,
            &id,
            Kind::Contacts,
            "vcard".into(),
            vec![cut],
        )
        .await;
        assert!(matches!(refused, Err(WriteError::Pim(_))), "{refused:?}");
        assert_eq!(c.get(&contacts, &id).unwrap().unwrap(), stored);
        assert_eq!(
            c.log_position(&contacts).unwrap(),
            logged,
            "nothing of it was written"
        );
        // An edit out of range, or of a record that is not there.
        let far = TextEdit {
            position: 1_000_000,
            delete: 0,
            insert: "x".into(),
        };
        let refused = owner_edit_text(
            &c,
            &contacts,
            &id,
            Kind::Contacts,
            "vcard".into(),
            vec![far.clone()],
        )
        .await;
        assert!(
            matches!(refused, Err(WriteError::BadEdit(_))),
            "{refused:?}"
        );
        let refused = owner_edit_text(
            &c,
            &contacts,
            &RecordId::parse("nobody").unwrap(),
            Kind::Contacts,
            "vcard".into(),
            vec![far],
        )
        .await;
        assert!(matches!(refused, Err(WriteError::Missing)), "{refused:?}");

        // A record that is not there.
        let missing = RecordId::parse("nobody").unwrap();
        assert!(matches!(
            owner_write(&c, &contacts, &missing, Change::TextEdited).await,
            Err(WriteError::Missing)
        ));
    }
}
