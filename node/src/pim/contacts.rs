//! Contacts: the record shape of a vCard (docs/SCHEMA.md), both ways.
//!
//! In: vCard text (2.1, 3.0, 4.0; what phones and mail programs export). Out: a record
//! whose fields an app or a grant can name (`name`, `emails`, `phones`, ...) plus the
//! original text in `vcard`. When fields change, the text changes with them: only the
//! lines of the changed fields are written anew (by `calcard`), every other line stays
//! byte for byte, so unknown and vendor properties survive.

use calcard::vcard::{
    VCard, VCardEntry, VCardParameter, VCardParameterName, VCardParameterValue, VCardProperty,
    VCardValue, VCardVersion,
};
use serde_json::{Map, Value, json};

use super::PimError;
use super::lines::{self, Line};

/// The field holding the vCard text.
pub const VCARD: &str = "vcard";

/// The fields a contact has, each made from one or more vCard properties. `email` and
/// `phone` are the preferred (or first) of `emails` and `phones`.
pub const FIELDS: &[&str] = &[
    "uid",
    "name",
    "name_parts",
    "nickname",
    "email",
    "emails",
    "phone",
    "phones",
    "addresses",
    "organization",
    "title",
    "birthday",
    "notes",
    "urls",
    "groups",
    "photo",
];

/// The vCard properties a field is made from.
fn properties_of(field: &str) -> &'static [&'static str] {
    match field {
        "uid" => &["UID"],
        "name" => &["FN"],
        "name_parts" => &["N"],
        "nickname" => &["NICKNAME"],
        "email" | "emails" => &["EMAIL"],
        "phone" | "phones" => &["TEL"],
        "addresses" => &["ADR"],
        "organization" => &["ORG"],
        "title" => &["TITLE"],
        "birthday" => &["BDAY"],
        "notes" => &["NOTE"],
        "urls" => &["URL"],
        "groups" => &["CATEGORIES"],
        "photo" => &["PHOTO"],
        _ => &[],
    }
}

/// Parses one vCard.
pub fn parse(text: &str) -> Result<VCard, PimError> {
    let text = decoded_quoted_printable(text);
    match calcard::Parser::new(&text).entry() {
        calcard::Entry::VCard(card) => Ok(card),
        other => Err(PimError::Unreadable(format!("not a vCard: {other:?}"))),
    }
}

/// vCard 2.1 values in quoted-printable, decoded (with their charset) before `calcard`
/// reads them: calcard 0.3.14 decodes them one component at a time and garbles a
/// structured value whose component starts with an encoded character (`ADR:;;…;
/// G=C3=B6ttingen`). The stored text is never changed; only what is read from it.
fn decoded_quoted_printable(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.to_ascii_uppercase().contains("QUOTED-PRINTABLE") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for line in lines::split(text) {
        let unfolded = line.unfolded();
        let Some((head, value)) = split_head(&unfolded) else {
            out.push_str(&line.raw);
            continue;
        };
        let params: Vec<&str> = head.split(';').collect();
        let is_qp = params.iter().skip(1).any(|p| {
            let p = p.trim().to_ascii_uppercase();
            p == "QUOTED-PRINTABLE" || p == "ENCODING=QUOTED-PRINTABLE" || p == "ENCODING=Q"
        });
        let decoded = is_qp
            .then(|| {
                mail_parser::decoders::quoted_printable::quoted_printable_decode(value.as_bytes())
            })
            .flatten();
        let Some(bytes) = decoded else {
            out.push_str(&line.raw);
            continue;
        };
        let charset = params.iter().skip(1).find_map(|p| {
            let (k, v) = p.split_once('=')?;
            k.trim()
                .eq_ignore_ascii_case("CHARSET")
                .then(|| v.trim().to_owned())
        });
        let text = match charset
            .as_deref()
            .and_then(|c| mail_parser::decoders::charsets::map::charset_decoder(c.as_bytes()))
        {
            Some(decode) => decode(&bytes),
            None => String::from_utf8_lossy(&bytes).into_owned(),
        };
        let kept: Vec<&str> = params
            .iter()
            .enumerate()
            .filter(|(i, p)| {
                let upper = p.trim().to_ascii_uppercase();
                *i == 0
                    || !(upper == "QUOTED-PRINTABLE"
                        || upper.starts_with("ENCODING=")
                        || upper.starts_with("CHARSET="))
            })
            .map(|(_, p)| *p)
            .collect();
        let value = text
            .replace("\r\n", "\\n")
            .replace('\n', "\\n")
            .replace('\r', "");
        out.push_str(&kept.join(";"));
        out.push(':');
        out.push_str(&value);
        out.push_str("\r\n");
    }
    std::borrow::Cow::Owned(out)
}

/// `(head, value)` of an unfolded content line, split at the first unquoted `:`.
fn split_head(unfolded: &str) -> Option<(&str, &str)> {
    let mut quoted = false;
    for (i, c) in unfolded.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ':' if !quoted => return Some((&unfolded[..i], &unfolded[i + 1..])),
            _ => {}
        }
    }
    None
}

/// The record fields of a vCard (without `vcard`); a photo given inline is returned
/// apart, to be stored as a blob.
pub fn fields(card: &VCard) -> (Map<String, Value>, Option<InlinePhoto>) {
    let mut out = Map::new();
    let mut photo = None;
    let text_of = |e: &VCardEntry| -> Option<String> {
        let parts: Vec<String> = e
            .values
            .iter()
            .filter_map(value_text)
            .filter(|s| !s.is_empty())
            .collect();
        (!parts.is_empty()).then(|| parts.join(", "))
    };
    if let Some(uid) = card.property(&VCardProperty::Uid).and_then(text_of) {
        out.insert("uid".into(), Value::String(uid));
    }
    if let Some(name) = card.property(&VCardProperty::Fn).and_then(text_of) {
        out.insert("name".into(), Value::String(name));
    }
    if let Some(n) = card.property(&VCardProperty::N) {
        let part = |i: usize| n.values.get(i).and_then(value_text).unwrap_or_default();
        let parts = json!({
            "family": part(0), "given": part(1), "additional": part(2),
            "prefix": part(3), "suffix": part(4),
        });
        out.insert("name_parts".into(), parts);
    }
    let nicknames: Vec<String> = card
        .properties(&VCardProperty::Nickname)
        .filter_map(text_of)
        .collect();
    if !nicknames.is_empty() {
        out.insert("nickname".into(), Value::String(nicknames.join(", ")));
    }
    let emails = typed_values(card, &VCardProperty::Email);
    if let Some(primary) = primary(&emails) {
        out.insert("email".into(), primary);
        out.insert("emails".into(), Value::Array(emails));
    }
    let phones = typed_values(card, &VCardProperty::Tel);
    if let Some(primary) = primary(&phones) {
        out.insert("phone".into(), primary);
        out.insert("phones".into(), Value::Array(phones));
    }
    let addresses: Vec<Value> = card
        .properties(&VCardProperty::Adr)
        .map(|e| {
            let part = |i: usize| e.values.get(i).and_then(value_text).unwrap_or_default();
            let mut address = json!({
                "po_box": part(0), "extended": part(1), "street": part(2),
                "locality": part(3), "region": part(4), "postcode": part(5), "country": part(6),
            });
            describe(card, e, &mut address);
            address
        })
        .collect();
    if !addresses.is_empty() {
        out.insert("addresses".into(), Value::Array(addresses));
    }
    if let Some(org) = card.property(&VCardProperty::Org).and_then(text_of) {
        out.insert("organization".into(), Value::String(org));
    }
    if let Some(title) = card.property(&VCardProperty::Title).and_then(text_of) {
        out.insert("title".into(), Value::String(title));
    }
    if let Some(bday) = card.property(&VCardProperty::Bday) {
        let text = match bday.values.first() {
            Some(VCardValue::PartialDateTime(d)) => match (d.year, d.month, d.day) {
                (Some(y), Some(m), Some(day)) => Some(format!("{y:04}-{m:02}-{day:02}")),
                (None, Some(m), Some(day)) => Some(format!("--{m:02}-{day:02}")),
                _ => None,
            },
            Some(other) => value_text(other),
            None => None,
        };
        if let Some(text) = text {
            out.insert("birthday".into(), Value::String(text));
        }
    }
    let notes: Vec<String> = card
        .properties(&VCardProperty::Note)
        .filter_map(text_of)
        .collect();
    if !notes.is_empty() {
        out.insert("notes".into(), Value::String(notes.join("\n")));
    }
    let urls: Vec<Value> = card
        .properties(&VCardProperty::Url)
        .filter_map(|e| e.values.first().and_then(value_text))
        .map(Value::String)
        .collect();
    if !urls.is_empty() {
        out.insert("urls".into(), Value::Array(urls));
    }
    let groups: Vec<Value> = card
        .properties(&VCardProperty::Categories)
        .flat_map(|e| e.values.iter().filter_map(value_text))
        .filter(|s| !s.is_empty())
        .map(Value::String)
        .collect();
    if !groups.is_empty() {
        out.insert("groups".into(), Value::Array(groups));
    }
    if let Some(p) = card.property(&VCardProperty::Photo) {
        match p.values.first() {
            Some(VCardValue::Binary(data)) => {
                let media_type = data
                    .content_type
                    .clone()
                    .unwrap_or_else(|| "application/octet-stream".into());
                photo = Some(InlinePhoto {
                    bytes: data.data.clone(),
                    media_type,
                });
            }
            Some(other) => {
                if let Some(uri) = value_text(other) {
                    out.insert("photo".into(), json!({ "uri": uri }));
                }
            }
            None => {}
        }
    }
    (out, photo)
}

/// A photo given inside a vCard, to be kept as a blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlinePhoto {
    pub bytes: Vec<u8>,
    pub media_type: String,
}

fn value_text(value: &VCardValue) -> Option<String> {
    match value {
        VCardValue::Text(t) => Some(t.clone()),
        VCardValue::Component(parts) => Some(parts.join(",")),
        VCardValue::Integer(i) => Some(i.to_string()),
        VCardValue::Float(f) => Some(f.to_string()),
        VCardValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The values of a repeated property with their types, label and preference.
fn typed_values(card: &VCard, property: &VCardProperty) -> Vec<Value> {
    card.properties(property)
        .filter_map(|e| {
            let value = e.values.first().and_then(value_text)?;
            let value = value.strip_prefix("tel:").unwrap_or(&value).to_owned();
            let mut item = json!({ "value": value });
            describe(card, e, &mut item);
            Some(item)
        })
        .collect()
}

/// Adds `types`, `label` and `pref` of a property to `item`.
fn describe(card: &VCard, e: &VCardEntry, item: &mut Value) {
    let mut types: Vec<String> = Vec::new();
    let mut pref = false;
    for param in &e.params {
        match (&param.name, &param.value) {
            (VCardParameterName::Type, value) => {
                if let Some(t) = value.as_text() {
                    let t = t.to_ascii_lowercase();
                    if t == "pref" {
                        pref = true;
                    } else if t != "internet" && !types.contains(&t) {
                        types.push(t);
                    }
                }
            }
            (VCardParameterName::Pref, _) => pref = true,
            _ => {}
        }
    }
    if !types.is_empty() {
        item["types"] = json!(types);
    }
    if pref {
        item["pref"] = Value::Bool(true);
    }
    // Apple and Google give a custom label as `itemN.X-ABLabel` beside `itemN.EMAIL`.
    let label = e.group.as_deref().and_then(|group| {
        card.entries
            .iter()
            .find(|x| {
                x.group.as_deref() == Some(group)
                    && matches!(&x.name, VCardProperty::Other(n) if n.eq_ignore_ascii_case("X-ABLabel"))
            })
            .and_then(|x| x.values.first())
            .and_then(value_text)
    });
    if let Some(label) = label {
        let label = label
            .strip_prefix("_$!<")
            .and_then(|l| l.strip_suffix(">!$_"))
            .unwrap_or(&label)
            .to_owned();
        item["label"] = Value::String(label);
    }
}

fn primary(items: &[Value]) -> Option<Value> {
    items
        .iter()
        .find(|i| i["pref"] == true)
        .or_else(|| items.first())
        .map(|i| i["value"].clone())
}

/// The fields that say one thing twice: the preferred address or number, and the list.
pub const PAIRS: [(&str, &str); 2] = [("email", "emails"), ("phone", "phones")];

/// Brings `email`/`phone` and their lists into line after a change: a changed `email`
/// (with `emails` unchanged) replaces the preferred address in the list. With
/// `add_lists` false, only a record that has both sides is brought into line (a plain
/// record written with `email` alone, or `emails` alone, stays as it was written).
pub fn settle(old: &Map<String, Value>, new: &mut Map<String, Value>, add_lists: bool) {
    for (one, many) in PAIRS {
        if !add_lists
            && (new.get(many).is_none() || (new.get(one).is_none() && old.get(one).is_none()))
        {
            continue;
        }
        let one_changed = old.get(one) != new.get(one);
        let many_changed = old.get(many) != new.get(many);
        if one_changed && !many_changed {
            match new.get(one).cloned() {
                Some(Value::String(value)) => {
                    let mut items = new
                        .get(many)
                        .and_then(Value::as_array)
                        .cloned()
                        .unwrap_or_default();
                    let at = items
                        .iter()
                        .position(|i| i["pref"] == true)
                        .or(if items.is_empty() { None } else { Some(0) });
                    match at {
                        Some(at) => items[at]["value"] = Value::String(value),
                        None => items.push(json!({ "value": value })),
                    }
                    new.insert(many.into(), Value::Array(items));
                }
                _ => {
                    new.remove(many);
                }
            }
        } else if many_changed {
            match new
                .get(many)
                .and_then(Value::as_array)
                .and_then(|items| primary(items))
            {
                Some(primary) => {
                    new.insert(one.into(), primary);
                }
                None => {
                    new.remove(one);
                }
            }
        }
    }
}

/// The vCard text for `record`: its stored text with the lines of every field that
/// differs from what that text says written anew (a record without text gets a new
/// vCard 4.0).
pub fn render(record: &Map<String, Value>) -> Result<String, PimError> {
    let original = record.get(VCARD).and_then(Value::as_str);
    let (card_lines, old) = match original {
        Some(text) => {
            let card = parse(text)?;
            (lines::split(text), fields(&card).0)
        }
        None => (
            lines::split("BEGIN:VCARD\r\nVERSION:4.0\r\nEND:VCARD\r\n"),
            Map::new(),
        ),
    };
    let is_v4 = card_lines
        .iter()
        .find(|l| l.is("VERSION"))
        .is_none_or(|l| l.value().trim().starts_with('4'));
    let mut out = card_lines;
    for field in FIELDS {
        // Photos kept as blobs stay as the text has them (see docs/SCHEMA.md).
        if *field == "photo" && record.get("photo").is_some_and(|p| p.get("blob").is_some()) {
            continue;
        }
        if old.get(*field) == record.get(*field) || *field == "email" || *field == "phone" {
            continue;
        }
        let new_lines = lines_for(field, record, is_v4);
        replace(&mut out, properties_of(field), new_lines);
    }
    // A version-4 card needs FN: keep one (empty if nothing better).
    if is_v4 && !out.iter().any(|l| l.is("FN")) {
        replace(
            &mut out,
            &["FN"],
            vec![entry_line(
                VCardEntry::new(VCardProperty::Fn).with_value(String::new()),
                is_v4,
            )],
        );
    }
    Ok(out.iter().map(|l| l.raw.as_str()).collect())
}

/// Swaps the lines of `properties` (and the label lines of their groups) for `new`,
/// where the first of them stood (else before `END`).
fn replace(out: &mut Vec<Line>, properties: &[&str], new: Vec<Line>) {
    let targeted = |l: &Line| properties.iter().any(|p| *p == l.name());
    let groups: Vec<String> = out
        .iter()
        .filter(|l| targeted(l))
        .filter_map(Line::group)
        .collect();
    let at = out
        .iter()
        .position(targeted)
        .unwrap_or_else(|| out.iter().rposition(|l| l.is("END")).unwrap_or(out.len()));
    let mut index = 0;
    let mut insert_at = at;
    out.retain(|l| {
        let drop =
            targeted(l) || (l.group().is_some_and(|g| groups.contains(&g)) && l.is("X-ABLABEL"));
        if drop && index < at {
            insert_at -= 1;
        }
        index += 1;
        !drop
    });
    for (offset, line) in new.into_iter().enumerate() {
        out.insert(insert_at + offset, line);
    }
}

fn entry_line(entry: VCardEntry, is_v4: bool) -> Line {
    let mut raw = String::new();
    entry
        .write_to(&mut raw, is_v4)
        .expect("writing to a String cannot fail");
    Line { raw, number: 0 }
}

fn text_entry(property: VCardProperty, text: &str) -> VCardEntry {
    VCardEntry::new(property).with_value(text.to_owned())
}

/// The lines that say `field` of `record`.
fn lines_for(field: &str, record: &Map<String, Value>, is_v4: bool) -> Vec<Line> {
    let Some(value) = record.get(field).filter(|v| !v.is_null()) else {
        return Vec::new();
    };
    let line = |e: VCardEntry| entry_line(e, is_v4);
    let str_of = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match field {
        "uid" => vec![line(text_entry(VCardProperty::Uid, &str_of(value)))],
        "name" => vec![line(text_entry(VCardProperty::Fn, &str_of(value)))],
        "nickname" => vec![line(text_entry(VCardProperty::Nickname, &str_of(value)))],
        "organization" => vec![line(text_entry(VCardProperty::Org, &str_of(value)))],
        "title" => vec![line(text_entry(VCardProperty::Title, &str_of(value)))],
        "notes" => vec![line(text_entry(VCardProperty::Note, &str_of(value)))],
        "name_parts" => {
            let part = |k: &str| VCardValue::Text(value.get(k).map(str_of).unwrap_or_default());
            vec![line(VCardEntry::new(VCardProperty::N).with_values(vec![
                part("family"),
                part("given"),
                part("additional"),
                part("prefix"),
                part("suffix"),
            ]))]
        }
        "birthday" => {
            let text = str_of(value);
            let date = parse_date(&text);
            let entry = match date {
                Some(d) => VCardEntry::new(VCardProperty::Bday)
                    .with_values(vec![VCardValue::PartialDateTime(d)]),
                None => text_entry(VCardProperty::Bday, &text),
            };
            vec![line(entry)]
        }
        "emails" | "phones" => {
            let property = if field == "emails" {
                VCardProperty::Email
            } else {
                VCardProperty::Tel
            };
            items(value)
                .enumerate()
                .flat_map(|(i, item)| {
                    let value = item.get("value").map(str_of).unwrap_or_default();
                    labeled(
                        property.clone(),
                        item,
                        vec![VCardValue::Text(value)],
                        i,
                        field,
                        is_v4,
                    )
                })
                .collect()
        }
        "addresses" => items(value)
            .enumerate()
            .flat_map(|(i, item)| {
                let part = |k: &str| VCardValue::Text(item.get(k).map(str_of).unwrap_or_default());
                let values = vec![
                    part("po_box"),
                    part("extended"),
                    part("street"),
                    part("locality"),
                    part("region"),
                    part("postcode"),
                    part("country"),
                ];
                labeled(VCardProperty::Adr, item, values, i, field, is_v4)
            })
            .collect(),
        "urls" => items(value)
            .map(|u| line(text_entry(VCardProperty::Url, &str_of(u))))
            .collect(),
        "groups" => {
            let values: Vec<VCardValue> =
                items(value).map(|g| VCardValue::Text(str_of(g))).collect();
            if values.is_empty() {
                Vec::new()
            } else {
                vec![line(
                    VCardEntry::new(VCardProperty::Categories).with_values(values),
                )]
            }
        }
        "photo" => match value.get("uri").and_then(Value::as_str) {
            Some(uri) => vec![line(
                VCardEntry::new(VCardProperty::Photo)
                    .with_param(VCardParameter::value(VCardParameterValue::Text(
                        "uri".into(),
                    )))
                    .with_value(uri.to_owned()),
            )],
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

fn items(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// An entry with its types and preference, and its label as `itemN.X-ABLabel`.
fn labeled(
    property: VCardProperty,
    item: &Value,
    values: Vec<VCardValue>,
    index: usize,
    field: &str,
    is_v4: bool,
) -> Vec<Line> {
    let mut entry = VCardEntry::new(property).with_values(values);
    for t in items(item.get("types").unwrap_or(&Value::Null)) {
        if let Some(t) = t.as_str() {
            entry.add_param(VCardParameter::typ(VCardParameterValue::Text(t.to_owned())));
        }
    }
    if item.get("pref") == Some(&Value::Bool(true)) {
        if is_v4 {
            entry.add_param(VCardParameter::pref(1u32));
        } else {
            entry.add_param(VCardParameter::typ(VCardParameterValue::Text(
                "pref".into(),
            )));
        }
    }
    let label = item.get("label").and_then(Value::as_str);
    let group = label.map(|_| format!("hearth-{field}{}", index + 1));
    let mut out = vec![entry_line(entry.with_group(group.clone()), is_v4)];
    if let (Some(label), Some(group)) = (label, group) {
        let label_entry = VCardEntry::new(VCardProperty::Other("X-ABLabel".into()))
            .with_group(Some(group))
            .with_value(label.to_owned());
        out.push(entry_line(label_entry, is_v4));
    }
    out
}

fn parse_date(text: &str) -> Option<calcard::common::PartialDateTime> {
    let (year, rest) = match text.strip_prefix("--") {
        Some(rest) => (None, rest),
        None => {
            let (y, rest) = text.split_once('-')?;
            (Some(y.parse::<u16>().ok()?), rest)
        }
    };
    let (m, d) = rest.split_once('-')?;
    Some(calcard::common::PartialDateTime {
        year,
        month: Some(m.parse().ok()?),
        day: Some(d.parse().ok()?),
        ..Default::default()
    })
}

/// The vCard version a text declares (4.0 when it declares none).
pub fn version_of(card: &VCard) -> VCardVersion {
    card.version().unwrap_or(VCardVersion::V4_0)
}

/// `text` (one vCard) with a `UID` line if it has none.
pub fn with_uid(text: String, uid: &str) -> String {
    let mut lines = lines::split(&text);
    if lines.iter().any(|l| l.is("UID")) {
        return text;
    }
    replace(
        &mut lines,
        &["UID"],
        vec![entry_line(text_entry(VCardProperty::Uid, uid), false)],
    );
    lines.iter().map(|l| l.raw.as_str()).collect()
}
