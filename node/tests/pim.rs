//! vCard and iCalendar files as phones and mail programs export them (written to look
//! like Apple's, Google's and Outlook's: grouped labels, embedded photos, non-ASCII,
//! folded lines, quoted-printable, time zones, all-day events, recurrences with
//! exceptions and an override, attendees, alarms) read into records and written back:
//! unchanged records come back byte for byte, a changed field changes only its lines.

use std::path::PathBuf;

use hearth_node::pim::{self, Kind, calendar, contacts};
use serde_json::{Map, Value, json};

/// The limit of one record, as a node has it.
const LIMIT: usize = 1024 * 1024;

fn fixture(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/pim")
        .join(name);
    std::fs::read_to_string(path).unwrap()
}

fn records(kind: Kind, file: &str) -> Vec<Map<String, Value>> {
    let (imported, skipped) = pim::read_file(kind, &fixture(file), LIMIT).unwrap();
    assert!(skipped.is_empty(), "{file}: {skipped:?}");
    imported.into_iter().map(|i| i.record).collect()
}

fn with_ids(records: Vec<Map<String, Value>>) -> Vec<(String, Map<String, Value>)> {
    records
        .into_iter()
        .map(|r| (pim::id_for_uid(r["uid"].as_str().unwrap()).to_string(), r))
        .collect()
}

fn by_name<'a>(records: &'a [Map<String, Value>], name: &str) -> &'a Map<String, Value> {
    records
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no {name}"))
}

#[test]
fn contacts_read_as_people_wrote_them() {
    let apple = records(Kind::Contacts, "apple.vcf");
    assert_eq!(apple.len(), 2);
    let ada = by_name(&apple, "Ada Lovelace");
    assert_eq!(ada["uid"], "4E1A2B3C-1111-2222-3333-444455556666");
    assert_eq!(
        ada["emails"],
        json!([
            {"value": "ada@example.org", "label": "Work", "pref": true},
            {"value": "ada.home@example.org", "label": "Home office"}
        ])
    );
    assert_eq!(ada["email"], "ada@example.org");
    assert_eq!(ada["phones"][0]["types"], json!(["cell", "voice"]));
    assert_eq!(ada["addresses"][0]["locality"], "London");
    assert_eq!(ada["addresses"][0]["street"], "12 St James's Square");
    assert_eq!(ada["birthday"], "1815-12-10");
    assert_eq!(ada["groups"], json!(["math", "friends"]));
    assert_eq!(ada["name_parts"]["family"], "Lovelace");
    assert!(
        ada["notes"]
            .as_str()
            .unwrap()
            .contains("algorithm, for the Analytical Engine.\nLoved")
    );
    let (_, photo) = contacts::fields(&contacts::parse(ada["vcard"].as_str().unwrap()).unwrap());
    let photo = photo.expect("the embedded photo is handed over for the blob store");
    assert!(
        photo.bytes.starts_with(b"\x89PNG"),
        "{:?}",
        &photo.bytes[..8]
    );
    let karel = by_name(&apple, "Karel Čapek");
    assert_eq!(karel["phones"][0]["label"], "Písárna");
    assert!(
        karel["notes"]
            .as_str()
            .unwrap()
            .ends_with("musela zalomit."),
        "{}",
        karel["notes"]
    );

    let google = records(Kind::Contacts, "google.vcf");
    assert_eq!(google.len(), 2);
    let grace = by_name(&google, "Grace Hopper");
    let uid = grace["uid"].as_str().unwrap();
    assert!(
        uid.starts_with("grace-hopper-") && uid.len() == "grace-hopper-".len() + 10,
        "no UID: one from the name and the content: {uid}"
    );
    assert_eq!(grace["addresses"][0]["label"], "Resting place");
    assert_eq!(
        grace["urls"],
        json!(["https://en.wikipedia.org/wiki/Grace_Hopper"])
    );

    let outlook = records(Kind::Contacts, "outlook.vcf");
    let emmy = by_name(&outlook, "Emmy Noether");
    assert_eq!(emmy["addresses"][0]["street"], "Bunsenstraße 3-5");
    assert_eq!(emmy["addresses"][0]["locality"], "Göttingen");
    assert_eq!(emmy["email"], "emmy@uni-goettingen.example.de");
    assert!(
        emmy["notes"]
            .as_str()
            .unwrap()
            .contains("symmetry and conservation laws.")
    );

    let v4 = records(Kind::Contacts, "v4.vcf");
    assert_eq!(
        v4[0]["uid"],
        "urn:uuid:f81d4fae-7dec-11d0-a765-00a0c91e6bf6"
    );
    assert_eq!(v4[0]["phone"], "+1-555-555-0100");
    assert_eq!(v4[0]["emails"][0]["pref"], true);
}

#[test]
fn unchanged_contacts_come_back_byte_for_byte() {
    for file in ["apple.vcf", "google.vcf", "outlook.vcf", "v4.vcf"] {
        let exported =
            pim::export(Kind::Contacts, &with_ids(records(Kind::Contacts, file))).unwrap();
        assert_eq!(exported, fixture(file), "{file}");
    }
}

/// The lines of `after` that are not in `before`, and those of `before` not in `after`.
fn changed_lines(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let b: Vec<String> = pim::lines::split(before)
        .iter()
        .map(|l| l.raw.clone())
        .collect();
    let a: Vec<String> = pim::lines::split(after)
        .iter()
        .map(|l| l.raw.clone())
        .collect();
    (
        a.iter().filter(|l| !b.contains(l)).cloned().collect(),
        b.iter().filter(|l| !a.contains(l)).cloned().collect(),
    )
}

#[test]
fn a_changed_field_changes_only_its_lines() {
    let apple = records(Kind::Contacts, "apple.vcf");
    let before = by_name(&apple, "Ada Lovelace").clone();
    let mut after = before.clone();
    after.insert("name".into(), json!("Ada King"));
    after.insert("email".into(), json!("countess@example.org"));
    pim::prepare(Kind::Contacts, Some(&before), &mut after).unwrap();
    let (added, removed) = changed_lines(
        before["vcard"].as_str().unwrap(),
        after["vcard"].as_str().unwrap(),
    );
    assert_eq!(
        removed,
        [
            "FN:Ada Lovelace\r\n",
            "item1.EMAIL;type=INTERNET;type=pref:ada@example.org\r\n",
            "item1.X-ABLabel:_$!<Work>!$_\r\n",
            "item2.EMAIL;type=INTERNET:ada.home@example.org\r\n",
            "item2.X-ABLabel:Home office\r\n",
        ]
    );
    assert_eq!(added.len(), 5, "{added:?}");
    assert!(added.contains(&"FN:Ada King\r\n".to_owned()), "{added:?}");
    // Read back, the record says what was changed and nothing else moved.
    let reread = contacts::fields(&contacts::parse(after["vcard"].as_str().unwrap()).unwrap()).0;
    assert_eq!(reread["name"], "Ada King");
    assert_eq!(reread["email"], "countess@example.org");
    assert_eq!(reread["emails"][0]["label"], "Work");
    assert_eq!(reread["emails"][1]["value"], "ada.home@example.org");
    assert_eq!(reread["addresses"], before["addresses"]);

    // A record made from fields alone stays plain; asked for its text, it gets a whole
    // vCard 4.0, with a UID made from its id.
    let mut fresh =
        json!({"name": "New Person", "emails": [{"value": "new@example.org", "types": ["work"]}]})
            .as_object()
            .unwrap()
            .clone();
    let plain = fresh.clone();
    pim::prepare(Kind::Contacts, None, &mut fresh).unwrap();
    assert_eq!(fresh, plain);
    let text = pim::text_of(Kind::Contacts, "p1", &fresh).unwrap();
    assert!(text.starts_with("BEGIN:VCARD\r\nVERSION:4.0\r\n"), "{text}");
    let reread = contacts::fields(&contacts::parse(&text).unwrap()).0;
    assert_eq!(reread["email"], "new@example.org");
    assert_eq!(reread["uid"], "hearth-p1");

    // A new text given whole is read: its fields win.
    let mut replaced = before.clone();
    replaced.insert("vcard".into(), json!(fixture("v4.vcf")));
    pim::prepare(Kind::Contacts, Some(&before), &mut replaced).unwrap();
    assert_eq!(replaced["name"], "Hedy Lamarr");
    assert!(replaced.get("addresses").is_none());
}

#[test]
fn calendars_read_split_by_uid_and_come_back() {
    let google = records(Kind::Calendar, "google.ics");
    assert_eq!(
        google.len(),
        2,
        "two UIDs: the recurring standup (with its override) and the holidays"
    );
    let standup = google
        .iter()
        .find(|r| r["uid"] == "standup-1234@google.com")
        .unwrap();
    assert_eq!(standup["summary"], "Standup");
    assert_eq!(standup["start"], "2026-11-02T09:00:00");
    assert_eq!(standup["start_tz"], "Europe/Paris");
    assert_eq!(standup["rrule"], "FREQ=WEEKLY;COUNT=10;BYDAY=MO");
    assert_eq!(standup["exdates"], json!(["2026-11-16T09:00:00"]));
    assert_eq!(standup["overrides"], json!(["2026-11-09T09:00:00"]));
    assert_eq!(standup["location"], "Salle Lovelace, 3e étage");
    assert_eq!(standup["attendees"][0]["name"], "Grace Hopper");
    assert_eq!(standup["organizer"]["email"], "ada@example.org");
    assert_eq!(standup["alarms"][0]["action"], "DISPLAY");
    assert!(
        standup["ical"]
            .as_str()
            .unwrap()
            .contains("BEGIN:VTIMEZONE"),
        "its time zone comes along"
    );
    let holidays = google
        .iter()
        .find(|r| r["uid"] == "holidays-5678@google.com")
        .unwrap();
    assert_eq!(
        (holidays["all_day"].clone(), holidays["start"].clone()),
        (json!(true), json!("2026-12-24"))
    );
    assert!(
        !holidays["ical"].as_str().unwrap().contains("VTIMEZONE"),
        "only the zones it uses"
    );

    let task = &records(Kind::Calendar, "apple.ics")[0];
    assert_eq!(
        (task["kind"].clone(), task["due"].clone()),
        (json!("task"), json!("2026-11-30"))
    );
    let outlook = &records(Kind::Calendar, "outlook.ics")[0];
    assert_eq!(outlook["start_tz"], "W. Europe Standard Time");
    assert_eq!(outlook["summary"], "Budget review");

    // Every component comes back byte for byte in one calendar file.
    for file in ["google.ics", "outlook.ics", "apple.ics"] {
        let exported =
            pim::export(Kind::Calendar, &with_ids(records(Kind::Calendar, file))).unwrap();
        calendar::parse(&exported).unwrap();
        let (zones, body) = calendar::components_text(&fixture(file));
        assert!(exported.contains(&body), "{file}: components changed");
        for (_, zone) in zones {
            assert_eq!(exported.matches(&zone).count(), 1, "{file}: each zone once");
        }
    }
}

#[test]
fn a_changed_event_changes_only_its_lines_and_keeps_its_override() {
    let google = records(Kind::Calendar, "google.ics");
    let before = google
        .iter()
        .find(|r| r["uid"] == "standup-1234@google.com")
        .unwrap()
        .clone();
    let mut after = before.clone();
    after.insert("summary".into(), json!("Stand-up, shorter"));
    after.insert("start".into(), json!("2026-11-02T09:15:00"));
    pim::prepare(Kind::Calendar, Some(&before), &mut after).unwrap();
    let (added, removed) = changed_lines(
        before["ical"].as_str().unwrap(),
        after["ical"].as_str().unwrap(),
    );
    assert_eq!(
        removed,
        [
            "DTSTART;TZID=Europe/Paris:20261102T090000\r\n",
            "SUMMARY:Standup\r\n"
        ]
    );
    assert_eq!(
        added,
        [
            "DTSTART;TZID=Europe/Paris:20261102T091500\r\n",
            "SUMMARY:Stand-up\\, shorter\r\n"
        ]
    );
    let reread = calendar::fields(&calendar::parse(after["ical"].as_str().unwrap()).unwrap());
    assert_eq!(reread["summary"], "Stand-up, shorter");
    assert_eq!(reread["overrides"], before["overrides"]);
}

#[test]
fn time_ranges_see_recurrences_exceptions_and_overrides() {
    let google = records(Kind::Calendar, "google.ics");
    let ical = |uid: &str| {
        let r = google.iter().find(|r| r["uid"] == uid).unwrap();
        calendar::parse(r["ical"].as_str().unwrap()).unwrap()
    };
    let standup = ical("standup-1234@google.com");
    let utc = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().timestamp();
    // Third Monday (Nov 16) is an exception; Nov 23 takes place (08:00 UTC).
    assert!(!calendar::overlaps(
        &standup,
        utc("2026-11-16T07:00:00Z"),
        utc("2026-11-16T10:00:00Z")
    ));
    assert!(calendar::overlaps(
        &standup,
        utc("2026-11-23T08:00:00Z"),
        utc("2026-11-23T08:10:00Z")
    ));
    // Nov 9 was moved to 10:00 Paris (09:00 UTC).
    assert!(!calendar::overlaps(
        &standup,
        utc("2026-11-09T08:00:00Z"),
        utc("2026-11-09T08:30:00Z")
    ));
    assert!(calendar::overlaps(
        &standup,
        utc("2026-11-09T09:00:00Z"),
        utc("2026-11-09T09:10:00Z")
    ));
    // After the tenth occurrence, nothing.
    assert!(!calendar::overlaps(
        &standup,
        utc("2027-02-01T00:00:00Z"),
        utc("2027-12-31T00:00:00Z")
    ));
    let holidays = ical("holidays-5678@google.com");
    assert!(calendar::overlaps(
        &holidays,
        utc("2026-12-25T12:00:00Z"),
        utc("2026-12-25T13:00:00Z")
    ));
    assert!(!calendar::overlaps(
        &holidays,
        utc("2026-12-27T00:00:00Z"),
        utc("2026-12-28T00:00:00Z")
    ));
}

#[test]
fn a_bad_file_names_the_entry_and_line_and_yields_nothing() {
    let mut broken = fixture("google.vcf");
    broken.push_str("BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Half a card\r\n");
    let e = pim::read_file(Kind::Contacts, &broken, LIMIT).unwrap_err();
    assert_eq!(e.to_string(), "entry 3 (line 22) has no END:VCARD");
    let garbage = "BEGIN:VCARD\r\nVERSION:3.0\r\nthis is not a property\r\nEND:VCARD\r\n";
    let e = pim::read_file(Kind::Contacts, garbage, LIMIT).unwrap_err();
    assert!(e.to_string().contains("entry 1, line 3"), "{e}");
    // A file of the other kind is named for what it is, with the command that reads it.
    let e = pim::read_file(Kind::Calendar, &fixture("google.vcf"), LIMIT).unwrap_err();
    assert_eq!(
        e.to_string(),
        "this file is vCard (contacts), not iCalendar (a calendar): use `hearth import contacts FILE`"
    );
    let e = pim::read_file(
        Kind::Contacts,
        "From ada@example.org Mon Jan 1 00:00:00 2026\nSubject: x\n\nhi\n",
        LIMIT,
    )
    .unwrap_err();
    assert!(e.to_string().contains("hearth import mail"), "{e}");
    let e = pim::read_file(Kind::Calendar, "BEGIN:VTODO\r\nEND:VTODO\r\n", LIMIT).unwrap_err();
    assert!(e.to_string().contains("line 1"), "{e}");
    let no_uid = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nSUMMARY:x\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    let e = pim::read_file(Kind::Calendar, no_uid, LIMIT).unwrap_err();
    assert!(e.to_string().contains("without a UID"), "{e}");
}

/// An event made from fields (no stored text, or a grant that cannot read it) is the
/// same bytes every time: a DAV client's strong ETag must not change with the clock.
#[test]
fn an_event_made_from_fields_is_the_same_every_time() {
    let record = json!({
        "uid": "u-1", "kind": "event", "summary": "Dentist",
        "start": "2026-12-03T09:00:00", "start_tz": "Europe/Paris",
        "end": "2026-12-03T10:00:00", "end_tz": "Europe/Paris",
    });
    let record = record.as_object().unwrap();
    let first = calendar::render(record).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(calendar::render(record).unwrap(), first);
    assert!(first.contains("SUMMARY:Dentist\r\n"), "{first}");
    assert!(first.contains("DTSTAMP:"), "{first}");
}

/// An entry longer than one record may be refuses the whole file, naming its line and
/// UID, before the entry is parsed.
#[test]
fn an_entry_longer_than_a_record_refuses_the_file() {
    let note = "n".repeat(4096);
    let text = format!(
        "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:ok-1\r\nFN:Ok\r\nEND:VCARD\r\nBEGIN:VCARD\r\nVERSION:3.0\r\nUID:long-2\r\nFN:Long\r\nNOTE:{note}\r\nEND:VCARD\r\n"
    );
    let e = pim::read_file(Kind::Contacts, &text, 1024)
        .unwrap_err()
        .to_string();
    assert!(e.contains("entry 2") && e.contains("line 6"), "{e}");
    assert!(e.contains("\"long-2\"") && e.contains("1024 bytes"), "{e}");
    assert!(pim::read_file(Kind::Contacts, &text, 8192).is_ok());
    let event = format!(
        "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nBEGIN:VEVENT\r\nUID:big-event\r\nDTSTART:20260101T100000Z\r\nSUMMARY:x\r\nDESCRIPTION:{note}\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"
    );
    let e = pim::read_file(Kind::Calendar, &event, 1024)
        .unwrap_err()
        .to_string();
    assert!(e.contains("big-event"), "{e}");
}

/// Old vCards in their own character set: 8-bit lines that name it (and the lines
/// that follow them) are read with it, quoted-printable ones too; UTF-16 with a mark
/// is read; 8-bit text that names no character set is refused with the fix.
#[test]
fn old_character_sets_are_read_or_refused_with_the_fix() {
    let mut latin1: Vec<u8> = b"BEGIN:VCARD\r\nVERSION:2.1\r\nUID:jose\r\nN;CHARSET=ISO-8859-1:Mart\xednez;Jos\xe9\r\nFN;CHARSET=ISO-8859-1:Jos\xe9 Mart\xednez\r\nADR;HOME:;;Stra\xdfe 1;K\xf6ln\r\n".to_vec();
    latin1.extend_from_slice(
        b"NOTE;ENCODING=QUOTED-PRINTABLE;CHARSET=ISO-8859-1:Caf=E9\r\nEND:VCARD\r\n",
    );
    let text = pim::decode_file(&latin1).unwrap();
    assert!(
        text.contains("FN;CHARSET=ISO-8859-1:Jos\u{e9} Mart\u{ed}nez"),
        "{text}"
    );
    assert!(text.contains("Stra\u{df}e 1;K\u{f6}ln"), "{text}");
    let (cards, _) = pim::read_file(Kind::Contacts, &text, LIMIT).unwrap();
    let record = &cards[0].record;
    assert_eq!(record["name"], "Jos\u{e9} Mart\u{ed}nez", "{record:?}");
    assert_eq!(record["notes"], "Caf\u{e9}", "{record:?}");
    // UTF-16 with its mark, as Outlook saves it.
    let utf16: Vec<u8> = [0xFF, 0xFE]
        .into_iter()
        .chain(
            "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:z\r\nFN:Zo\u{eb}\r\nEND:VCARD\r\n"
                .encode_utf16()
                .flat_map(u16::to_le_bytes),
        )
        .collect();
    assert!(pim::decode_file(&utf16).unwrap().contains("FN:Zo\u{eb}"));
    // A UTF-8 mark is dropped; plain UTF-8 is as it is.
    assert_eq!(
        pim::decode_file(b"\xEF\xBB\xBFBEGIN:VCARD").unwrap(),
        "BEGIN:VCARD"
    );
    // 8-bit text naming no character set: refused, with the command that converts it.
    let e = pim::decode_file(b"BEGIN:VCARD\r\nFN:Jos\xe9\r\nEND:VCARD\r\n").unwrap_err();
    assert!(
        e.contains("line 2") && e.contains("iconv -f WINDOWS-1252 -t UTF-8"),
        "{e}"
    );
}
