#![no_main]
//! iCalendar text from a client or a file (API write, DAV PUT, import): never a panic or
//! a hang. An object the node stores (`pim::prepare`; it may refuse one) is stored
//! with a text that parses again to the very fields stored beside it; the text written from the fields alone parses too; recurrence
//! expansion (`overlaps`, what a calendar-query runs) and export end. Input after a NUL
//! is a new value for a few fields (the edit path).
use hearth_node::fuzzing::check_dav_object;
use hearth_node::pim::{self, Kind, calendar, lines};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn in_step(record: &Map<String, Value>, what: &str) {
    let text = record[calendar::ICAL].as_str().expect("text");
    let ical = calendar::parse(text)
        .unwrap_or_else(|e| panic!("{what}: the stored text does not parse: {e}\n{text:?}"));
    let fields = calendar::fields(&ical);
    for field in calendar::FIELDS {
        assert_eq!(
            record.get(*field),
            fields.get(*field),
            "{what}: field {field} and the stored text disagree\n{text:?}"
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let (text, edit) = match input.split_once('\0') {
        Some((text, edit)) => (text, Some(edit)),
        None => (input, None),
    };
    for line in lines::split(text) {
        assert_eq!(line.is("UID"), line.name() == "UID", "{:?}", line.raw);
        let _ = (line.group(), line.value(), line.is_content());
    }
    let _ = pim::read_file(Kind::Calendar, text);
    let _ = check_dav_object(Kind::Calendar, text);
    let _ = calendar::components_text(text);
    let Ok(ical) = calendar::parse(text) else {
        return;
    };
    let fields = calendar::fields(&ical);
    let _ = calendar::uid_of(&ical);
    let _ = calendar::overlaps(&ical, i64::MIN / 2, i64::MAX / 2);
    let _ = calendar::overlaps(&ical, 1_700_000_000, 1_800_000_000);

    let mut record = fields.clone();
    record.insert(calendar::ICAL.into(), Value::String(text.to_owned()));
    if pim::prepare(Kind::Calendar, None, &mut record).is_err() {
        // Refused (400): no event or task, or nesting that calcard reads past but
        // the line scanner does not (an object broken enough that calcard and the
        // lines disagree where its event is).
        return;
    }
    in_step(&record, "stored");
    let _ = pim::export(Kind::Calendar, &[("r".into(), record.clone())]);

    let mut plain = fields.clone();
    plain.remove("overrides");
    let written = pim::text_of(Kind::Calendar, "r", &plain).expect("written from fields");
    calendar::parse(&written).expect("a text written from fields parses");

    if let Some(value) = edit {
        let mut after = record.clone();
        let value = Value::String(value.to_owned());
        for field in ["summary", "description", "location", "start"] {
            after.insert(field.into(), value.clone());
        }
        match pim::prepare(Kind::Calendar, Some(&record), &mut after) {
            Ok(()) => {
                calendar::parse(after[calendar::ICAL].as_str().expect("text"))
                    .expect("an edited object parses");
            }
            Err(e) => panic!("an edit of a stored object failed: {e}"),
        }
    }
});
