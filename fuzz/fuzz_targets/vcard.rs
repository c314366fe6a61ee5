#![no_main]
//! vCard text from a client or a file (API write, DAV PUT, import): never a panic or a
//! hang. A card that parses and is one object as the lines are cut is stored as the
//! node stores it (`pim::prepare`), and the stored text parses again to the very fields
//! stored beside it; the text written from
//! the fields alone (export, DAV for a record without text) parses too. Input after a
//! NUL is a new value for a few fields: the edit path writes their lines anew and the
//! text still parses to the fields kept.
use hearth_node::fuzzing::check_dav_object;
use hearth_node::pim::{self, Kind, contacts, lines};
use libfuzzer_sys::fuzz_target;
use serde_json::{Map, Value};

fn in_step(record: &Map<String, Value>, what: &str) {
    let text = record[contacts::VCARD].as_str().expect("text");
    let card = contacts::parse(text)
        .unwrap_or_else(|e| panic!("{what}: the stored text does not parse: {e}\n{text:?}"));
    let (fields, _) = contacts::fields(&card);
    for field in contacts::FIELDS {
        if *field == "photo" {
            continue;
        }
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
    let _ = pim::read_file(Kind::Contacts, text);
    let _ = check_dav_object(Kind::Contacts, text);
    let Ok(card) = contacts::parse(text) else {
        return;
    };
    let (fields, _photo) = contacts::fields(&card);

    // Stored with its text, as an API write or a DAV PUT stores it.
    let mut record = fields.clone();
    record.insert(contacts::VCARD.into(), Value::String(text.to_owned()));
    let one_card = lines::objects(text, "VCARD").is_ok_and(|o| o.len() == 1);
    match pim::prepare(Kind::Contacts, None, &mut record) {
        Ok(()) => in_step(&record, "stored"),
        // Refused (400) as a DAV PUT or an import would refuse it.
        Err(_) if !one_card => return,
        Err(e) => panic!("a card that parses and is one object is refused: {e}"),
    }
    let served = pim::text_of(Kind::Contacts, "r", &record).expect("served");
    let uid = record["uid"].as_str().unwrap_or_default().to_owned();
    contacts::parse(&contacts::with_uid(served, &uid)).expect("the served text parses");

    // Written from the fields alone.
    let mut plain = fields.clone();
    plain.remove("photo");
    let written = pim::text_of(Kind::Contacts, "r", &plain).expect("written from fields");
    contacts::parse(&written).expect("a text written from fields parses");
    let _ = pim::export(Kind::Contacts, &[("r".into(), record.clone())]);

    // The edit path: new values for some fields, their lines written anew.
    if let Some(value) = edit {
        let mut after = record.clone();
        let value = Value::String(value.to_owned());
        after.insert("name".into(), value.clone());
        after.insert("notes".into(), value.clone());
        after.insert("email".into(), value.clone());
        after.insert("organization".into(), value);
        match pim::prepare(Kind::Contacts, Some(&record), &mut after) {
            Ok(()) => {
                contacts::parse(after[contacts::VCARD].as_str().expect("text"))
                    .expect("an edited card parses");
            }
            Err(e) => panic!("an edit of a stored card failed: {e}"),
        }
    }
});
