//! Contacts and events edited with forms built from docs/SCHEMA.md's fields (raw JSON
//! stays, as the "advanced" view of the record page).
//!
//! A form shows a record's fields as a person reads them (one email address a line,
//! groups separated by commas, a start as a date and time) and a save writes only
//! the fields that differ from what the record holds when it is saved — as a merge,
//! so another field changed meanwhile (on another device, by an app) stays — through
//! the owner's write, where the vCard or iCalendar text follows the fields
//! (`pim::prepare`). An email address kept in the list keeps its types and label.

use serde_json::json;

use super::*;
use crate::pim::Kind;

/// How a field is shown and read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Input {
    /// One line of text.
    Line,
    /// One item a line (`emails`, `phones`: `{"value", "types"?, …}`).
    Items,
    /// One string a line (`urls`).
    Lines,
    /// Words separated by commas (`groups`, `categories`).
    Tags,
    /// Text of several lines.
    Text,
    /// A date, or a date and a time (`start`, `end`, `due`).
    When,
}

struct Spec {
    key: &'static str,
    label: &'static str,
    input: Input,
}

const fn spec(key: &'static str, label: &'static str, input: Input) -> Spec {
    Spec { key, label, input }
}

const CONTACT: &[Spec] = &[
    spec("name", "Name", Input::Line),
    spec("emails", "Email addresses (one a line)", Input::Items),
    spec("phones", "Phone numbers (one a line)", Input::Items),
    spec("organization", "Organization", Input::Line),
    spec("title", "Title", Input::Line),
    spec(
        "birthday",
        "Birthday (1815-12-10, or --12-10 without a year)",
        Input::Line,
    ),
    spec("urls", "Web addresses (one a line)", Input::Lines),
    spec("groups", "Groups (separated by commas)", Input::Tags),
    spec("notes", "Notes", Input::Text),
];

const EVENT: &[Spec] = &[
    spec("summary", "What", Input::Line),
    spec("location", "Where", Input::Line),
    spec("start", "Starts", Input::When),
    spec("end", "Ends", Input::When),
    spec("description", "Description", Input::Text),
    spec("url", "Web address", Input::Line),
    spec(
        "categories",
        "Categories (separated by commas)",
        Input::Tags,
    ),
];

const TASK: &[Spec] = &[
    spec("summary", "What", Input::Line),
    spec("start", "Starts", Input::When),
    spec("due", "Due", Input::When),
    spec("description", "Description", Input::Text),
    spec(
        "categories",
        "Categories (separated by commas)",
        Input::Tags,
    ),
];

const JOURNAL: &[Spec] = &[
    spec("summary", "What", Input::Line),
    spec("start", "Day", Input::When),
    spec("description", "Text", Input::Text),
    spec(
        "categories",
        "Categories (separated by commas)",
        Input::Tags,
    ),
];

/// The value of field `spec` of `record` as the form reads it: a plain contact may
/// have only `email` / `phone`, which is then its one item.
fn value_of<'a>(
    spec: &Spec,
    record: &'a Map<String, Value>,
) -> Option<std::borrow::Cow<'a, Value>> {
    use std::borrow::Cow;
    if let Some(value) = record.get(spec.key) {
        return Some(Cow::Borrowed(value));
    }
    let single = match spec.key {
        "emails" => "email",
        "phones" => "phone",
        _ => return None,
    };
    let value = record.get(single)?.as_str()?;
    Some(Cow::Owned(json!([{ "value": value }])))
}

/// Whether the form can show `value` as `input` without losing any of it (else the
/// field is left out of the form, and never written from it).
fn fits(input: Input, value: Option<&Value>) -> bool {
    let Some(value) = value else {
        return true;
    };
    match input {
        Input::Line | Input::Text | Input::When => value.is_string(),
        Input::Lines | Input::Tags => value
            .as_array()
            .is_some_and(|a| a.iter().all(Value::is_string)),
        Input::Items => value.as_array().is_some_and(|a| {
            a.iter()
                .all(|i| i.get("value").is_some_and(Value::is_string))
        }),
    }
}

/// The fields of a record of `collection` (`None`: no form, JSON only).
fn specs(collection: &CollectionName, record: &Map<String, Value>) -> Option<&'static [Spec]> {
    match Kind::of(collection.as_str())? {
        Kind::Contacts => Some(CONTACT),
        Kind::Calendar => Some(match record.get("kind").and_then(Value::as_str) {
            Some("task") => TASK,
            Some("journal") => JOURNAL,
            _ => EVENT,
        }),
    }
}

/// One field of a form, as the template shows it.
pub(super) struct FormField {
    pub(super) key: &'static str,
    pub(super) label: &'static str,
    /// `line`, `text` (a textarea), `date` or `datetime`.
    pub(super) input: &'static str,
    pub(super) value: String,
    /// What the person should know: the time zone of a time.
    pub(super) hint: String,
    /// Hidden fields sent with it (`KEY.zone`: how a time was written).
    pub(super) zone: String,
}

/// What a new record of `collection` starts as: its form (`None` for a collection
/// that has none). `kind`: `task` or `journal` for those calendar objects.
pub(super) fn new_form(collection: &CollectionName, kind: Option<&str>) -> Option<Vec<FormField>> {
    let mut record = Map::new();
    if let Some(kind) = kind {
        record.insert("kind".into(), json!(kind));
    }
    form(collection, &record)
}

/// The form of `record` of `collection`; `None` if its collection has none.
pub(super) fn form(
    collection: &CollectionName,
    record: &Map<String, Value>,
) -> Option<Vec<FormField>> {
    let specs = specs(collection, record)?;
    let all_day = record.get("all_day").and_then(Value::as_bool) == Some(true);
    Some(
        specs
            .iter()
            .filter_map(|spec| {
                let value = value_of(spec, record);
                let value = value.as_deref();
                if !fits(spec.input, value) {
                    return None;
                }
                let text =
                    |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
                let strings = |v: Option<&Value>, item: bool| -> Vec<String> {
                    v.and_then(Value::as_array)
                        .map(|items| {
                            items
                                .iter()
                                .filter_map(|i| if item { i.get("value") } else { Some(i) })
                                .filter_map(Value::as_str)
                                .map(str::to_owned)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let mut field = FormField {
                    key: spec.key,
                    label: spec.label,
                    input: "line",
                    value: String::new(),
                    hint: String::new(),
                    zone: String::new(),
                };
                match spec.input {
                    Input::Line => field.value = text(value),
                    Input::Text => {
                        field.input = "text";
                        field.value = text(value);
                    }
                    Input::Items | Input::Lines => {
                        field.input = "text";
                        field.value = strings(value, spec.input == Input::Items).join("\n");
                    }
                    Input::Tags => field.value = strings(value, false).join(", "),
                    Input::When => {
                        let written = text(value);
                        let tz = text(record.get(&format!("{}_tz", spec.key)));
                        if all_day || (written.len() == 10 && !written.contains('T')) {
                            field.input = "date";
                            field.value = written;
                            field.zone = "date".into();
                            field.hint = "all day".into();
                        } else if let Some(utc) = written.strip_suffix('Z') {
                            field.input = "datetime";
                            field.value = utc.to_owned();
                            field.zone = "utc".into();
                            field.hint = "UTC".into();
                        } else {
                            field.input = "datetime";
                            field.value = written;
                            field.hint = if tz.is_empty() {
                                "the time wherever you are".into()
                            } else {
                                tz
                            };
                        }
                    }
                }
                Some(field)
            })
            .collect(),
    )
}

/// The fields `form` (as posted) changes in `record`, as a merge patch (a field emptied
/// is `null`); a field the form does not carry is left alone. The error says which
/// field is wrong and why.
fn patch_of(
    collection: &CollectionName,
    record: &Map<String, Value>,
    posted: &HashMap<String, String>,
) -> Result<Map<String, Value>, String> {
    let specs = specs(collection, record).ok_or("this collection has no form")?;
    let mut patch = Map::new();
    for spec in specs {
        let Some(given) = posted.get(spec.key) else {
            continue;
        };
        let before = value_of(spec, record);
        let before = before.as_deref();
        if !fits(spec.input, before) {
            // Not shown by the form: not written from it either.
            continue;
        }
        let zone = posted.get(&format!("{}.zone", spec.key));
        let after =
            read(spec, given, before, zone).map_err(|why| format!("{}: {why}", spec.label))?;
        // Left as the form showed it (`KEY.was`): not the person's change, whatever the
        // record holds now (an app or another device may have changed it meanwhile).
        if let Some(was) = posted.get(&format!("{}.was", spec.key))
            && read(spec, was, before, zone).ok() == Some(after.clone())
        {
            continue;
        }
        if after.as_ref() != before {
            patch.insert(spec.key.into(), after.unwrap_or(Value::Null));
        }
    }
    Ok(patch)
}

/// A field's value as posted (`None`: empty, so the field goes).
fn read(
    spec: &Spec,
    given: &str,
    before: Option<&Value>,
    zone: Option<&String>,
) -> Result<Option<Value>, String> {
    let lines = || {
        given
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let one_line = |text: &str| -> Result<(), String> {
        if text.chars().any(char::is_control) {
            return Err("one line, without control characters".into());
        }
        Ok(())
    };
    Ok(match spec.input {
        Input::Line => {
            let text = given.trim();
            one_line(text)?;
            (!text.is_empty()).then(|| json!(text))
        }
        Input::Text => {
            let text = given.replace("\r\n", "\n");
            let text = text.trim_end();
            (!text.is_empty()).then(|| json!(text))
        }
        Input::Lines => {
            let lines = lines();
            lines.iter().try_for_each(|l| one_line(l))?;
            (!lines.is_empty()).then(|| json!(lines))
        }
        Input::Items => {
            let lines = lines();
            lines.iter().try_for_each(|l| one_line(l))?;
            let kept: Vec<&Value> = before
                .and_then(Value::as_array)
                .map(|a| a.iter().collect())
                .unwrap_or_default();
            let items: Vec<Value> = lines
                .iter()
                .map(|line| {
                    // An item kept keeps its types, label and preference.
                    kept.iter()
                        .find(|item| item.get("value").and_then(Value::as_str) == Some(line))
                        .map(|item| (*item).clone())
                        .unwrap_or_else(|| json!({ "value": line }))
                })
                .collect();
            (!items.is_empty()).then(|| json!(items))
        }
        Input::Tags => {
            let tags: Vec<String> = given
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_owned)
                .collect();
            tags.iter().try_for_each(|t| one_line(t))?;
            (!tags.is_empty()).then(|| json!(tags))
        }
        Input::When => {
            let text = given.trim();
            if text.is_empty() {
                return Ok(None);
            }
            let written = if zone.map(String::as_str) == Some("date") || !text.contains('T') {
                chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
                    .map_err(|_| format!("{text:?} is not a date (2026-11-22)"))?;
                text.to_owned()
            } else {
                let time = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
                    .or_else(|_| chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M"))
                    .map_err(|_| format!("{text:?} is not a date and time (2026-11-22T10:00)"))?;
                let mut written = time.format("%Y-%m-%dT%H:%M:%S").to_string();
                if zone.map(String::as_str) == Some("utc") {
                    written.push('Z');
                }
                written
            };
            Some(json!(written))
        }
    })
}

/// `POST /data/{collection}/{id}/fields`: saves a record's form (`new=1`: makes the
/// record, refused if one is there).
pub(super) async fn save_fields(
    State(vault): State<AppState>,
    Path((collection, id)): Path<(String, String)>,
    Posted { form, .. }: Posted,
) -> Response {
    let (name, id) = match writable_record(&collection, &id) {
        Ok(names) => names,
        Err(r) => return r,
    };
    let new = form.get("new").is_some_and(|v| v == "1");
    let current = match vault.collections.get(&name, &id) {
        Ok(Some(Value::Object(mut record))) if !new => {
            record.remove("id");
            record
        }
        Ok(Some(_)) if new => {
            return message(
                StatusCode::CONFLICT,
                "Not saved",
                &format!("{name} already has a record {id}. Nothing was changed."),
            );
        }
        Ok(None) if new => {
            let mut record = Map::new();
            if let Some(kind @ ("task" | "journal")) = form.get("kind").map(String::as_str) {
                record.insert("kind".into(), json!(kind));
            }
            record
        }
        Ok(_) => {
            return message(
                StatusCode::NOT_FOUND,
                "No such record",
                &format!("{name} has no record {id} (removed meanwhile?). Nothing was saved."),
            );
        }
        Err(e) => return failed(e.into()),
    };
    let patch = match patch_of(&name, &current, &form) {
        Ok(patch) => patch,
        Err(why) => {
            return message(
                StatusCode::BAD_REQUEST,
                "Not saved",
                &format!("{why}. Nothing was changed."),
            );
        }
    };
    let change = if new {
        let mut record: Map<String, Value> =
            patch.into_iter().filter(|(_, v)| !v.is_null()).collect();
        let needed = match Kind::of(name.as_str()) {
            Some(Kind::Contacts) => ["name"].as_slice(),
            _ => ["summary", "start"].as_slice(),
        };
        if let Some(missing) = needed.iter().find(|k| !record.contains_key(**k)) {
            let label = specs(&name, &current)
                .and_then(|s| s.iter().find(|s| s.key == *missing))
                .map_or(*missing, |s| s.label);
            return message(
                StatusCode::BAD_REQUEST,
                "Not saved",
                &format!("{label} is needed. Nothing was made."),
            );
        }
        if let Some(kind) = current.get("kind") {
            record.insert("kind".into(), kind.clone());
        }
        // Apps find it by its UID (CardDAV, CalDAV): the record's own id.
        record.insert("uid".into(), json!(id.as_str()));
        crate::pim::Change::Replace(record)
    } else if patch.is_empty() {
        return Redirect::to(&format!("/data/{name}/{id}")).into_response();
    } else {
        crate::pim::Change::Merge(patch)
    };
    if let Err(e) = owner::owner_write(&vault, &name, &id, change).await {
        return failed(e);
    }
    Redirect::to(&format!("/data/{name}/{id}")).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    /// A contact's form shows its lists as lines and reads them back: an address kept
    /// keeps its types, a new one is plain, one taken out goes; an untouched field is
    /// not written; an emptied one is removed.
    #[test]
    fn a_contacts_form_writes_only_what_changed() {
        let contacts = CollectionName::parse("contacts").unwrap();
        let record = json!({
            "name": "Ada Lovelace",
            "emails": [{"value": "ada@example.org", "types": ["work"], "pref": true}, {"value": "old@example.org"}],
            "groups": ["math", "poets"],
            "title": "Countess",
        });
        let record = record.as_object().unwrap();
        let form = super::form(&contacts, record).unwrap();
        let emails = form.iter().find(|f| f.key == "emails").unwrap();
        assert_eq!(emails.value, "ada@example.org\nold@example.org");
        assert_eq!(
            form.iter().find(|f| f.key == "groups").unwrap().value,
            "math, poets"
        );
        let patch = patch_of(
            &contacts,
            record,
            &posted(&[
                ("name", " Ada Lovelace "),
                ("emails", "ada@example.org\r\nnew@example.org\r\n"),
                ("groups", "math, poets"),
                ("title", ""),
                ("notes", ""),
            ]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({
                "emails": [{"value": "ada@example.org", "types": ["work"], "pref": true}, {"value": "new@example.org"}],
                "title": null,
            })
        );
        // A field left as the form showed it is not written, even if the record
        // changed meanwhile (here: the title, by an app).
        let mut now = record.clone();
        now.insert("title".into(), json!("Analyst"));
        let patch = patch_of(
            &contacts,
            &now,
            &posted(&[
                ("name", "Ada King"),
                ("name.was", "Ada Lovelace"),
                ("title", "Countess"),
                ("title.was", "Countess"),
                ("groups", "math, poets"),
                ("groups.was", "math, poets"),
            ]),
        )
        .unwrap();
        assert_eq!(Value::Object(patch), json!({"name": "Ada King"}));
        let err = patch_of(&contacts, record, &posted(&[("name", "Ada\u{7}")])).unwrap_err();
        assert!(err.starts_with("Name: one line"), "{err}");

        // A plain contact with only an `email`: shown as its one address, and a save
        // that leaves it writes nothing; a field the form cannot show is left alone.
        let plain = json!({"name": "Bob", "email": "bob@example.org", "title": {"odd": 1}});
        let plain = plain.as_object().unwrap();
        let form = super::form(&contacts, plain).unwrap();
        assert_eq!(
            form.iter().find(|f| f.key == "emails").unwrap().value,
            "bob@example.org"
        );
        assert!(form.iter().all(|f| f.key != "title"));
        let patch = patch_of(
            &contacts,
            plain,
            &posted(&[
                ("name", "Bob"),
                ("emails", "bob@example.org"),
                ("title", ""),
            ]),
        )
        .unwrap();
        assert!(patch.is_empty(), "{patch:?}");
    }

    /// An event's times read back as they were written: UTC stays UTC, a date stays a
    /// date, a zoned time keeps its zone (`start_tz` untouched); a wrong one is named.
    #[test]
    fn an_events_times_keep_how_they_were_written() {
        let calendar = CollectionName::parse("calendar-work").unwrap();
        let record = json!({
            "summary": "Standup",
            "start": "2026-11-22T09:00:00Z",
            "end": "2026-11-22T10:00:00",
            "end_tz": "Europe/Paris",
        });
        let record = record.as_object().unwrap();
        let form = super::form(&calendar, record).unwrap();
        let start = form.iter().find(|f| f.key == "start").unwrap();
        assert_eq!(
            (start.input, start.value.as_str(), start.zone.as_str()),
            ("datetime", "2026-11-22T09:00:00", "utc")
        );
        let end = form.iter().find(|f| f.key == "end").unwrap();
        assert_eq!((end.hint.as_str(), end.zone.as_str()), ("Europe/Paris", ""));
        let patch = patch_of(
            &calendar,
            record,
            &posted(&[
                ("start", "2026-11-22T09:30"),
                ("start.zone", "utc"),
                ("end", "2026-11-22T10:00:00"),
            ]),
        )
        .unwrap();
        assert_eq!(
            Value::Object(patch),
            json!({"start": "2026-11-22T09:30:00Z"})
        );
        let day = json!({"summary": "Holiday", "start": "2026-12-24", "all_day": true});
        let day = day.as_object().unwrap();
        let field = super::form(&calendar, day)
            .unwrap()
            .into_iter()
            .find(|f| f.key == "start")
            .unwrap();
        assert_eq!((field.input, field.zone.as_str()), ("date", "date"));
        let patch = patch_of(
            &calendar,
            day,
            &posted(&[("start", "2026-12-25"), ("start.zone", "date")]),
        )
        .unwrap();
        assert_eq!(Value::Object(patch), json!({"start": "2026-12-25"}));
        let err = patch_of(&calendar, record, &posted(&[("start", "tomorrow")])).unwrap_err();
        assert!(err.contains("\"tomorrow\" is not a date"), "{err}");
        let err =
            patch_of(&calendar, record, &posted(&[("start", "2026-13-40T10:00")])).unwrap_err();
        assert!(err.contains("is not a date and time"), "{err}");
    }
}
