#![no_main]
//! DAV request bodies (PROPFIND, REPORT, PROPPATCH, MKCOL) and hrefs: never a panic; a
//! body that reads is no deeper than the limit; the properties it asks for, written
//! back in a multistatus as the server writes them, read back the same (no request can
//! break the XML of its answer); an href that reads has a canonical href that reads to
//! the same target; filters, sync tokens and settable properties are read without a
//! panic.
use hearth_node::fuzzing::{
    WantedProps, XmlElement, dav_href, dav_xml, multistatus_of, parse_sync_token, query_admits,
    query_filter, settable_prop, wanted_props,
};
use libfuzzer_sys::fuzz_target;

const DAV: &str = "DAV:";
const EVENT: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:x\r\nBEGIN:VEVENT\r\nUID:e\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20261201T100000Z\r\nDTEND:20261201T110000Z\r\nRRULE:FREQ=WEEKLY;COUNT=3\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";

fn depth(e: &XmlElement) -> usize {
    1 + e.children.iter().map(depth).max().unwrap_or(0)
}

fn is(e: &XmlElement, ns: &str, name: &str) -> bool {
    e.ns == ns && e.name == name
}

fn href_round_trip(href: &str) {
    if let Ok((target, canonical)) = dav_href(href) {
        let again = dav_href(&canonical)
            .unwrap_or_else(|e| panic!("canonical href {canonical:?} of {href:?}: {e}"));
        assert_eq!(again, (target, canonical.clone()), "{href:?}");
    }
}

/// The predefined entities, undone once: `parse_xml` keeps a namespace name as written
/// (quick-xml does not unescape it), so one the answer escapes reads back escaped.
fn unescaped(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#13;", "\r")
        .replace("&amp;", "&")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        href_round_trip(text);
    }
    let root = match dav_xml(data) {
        Ok(Some(root)) => root,
        Ok(None) => {
            assert_eq!(wanted_props(None), WantedProps::All);
            return;
        }
        Err(_) => return,
    };
    assert!(depth(&root) <= 32, "deeper than the limit");
    let wanted = wanted_props(Some(&root));
    let props = match &wanted {
        WantedProps::These(props) => props.clone(),
        _ => Vec::new(),
    };
    // A multiget's hrefs, as the REPORT reads them.
    let hrefs: Vec<String> = root
        .children
        .iter()
        .filter(|c| is(c, DAV, "href"))
        .map(|h| h.text.trim().to_owned())
        .collect();
    for h in &hrefs {
        href_round_trip(h);
    }
    let answer = multistatus_of("/dav/contacts/contacts/", &props, &hrefs);
    assert!(
        !answer.contains(|c: char| c < ' ' && !matches!(c, '\t' | '\n' | '\r')),
        "a control character (not XML) in the answer: {answer:?}"
    );
    assert!(
        !answer.contains(":x=\"\""),
        "a prefix bound to no namespace: {answer}"
    );
    let back = dav_xml(answer.as_bytes())
        .unwrap_or_else(|e| panic!("the answer is not XML: {e}\n{answer}"))
        .expect("the answer has a root");
    assert!(is(&back, DAV, "multistatus"), "{answer}");
    let responses: Vec<&XmlElement> = back
        .children
        .iter()
        .filter(|c| is(c, DAV, "response"))
        .collect();
    assert_eq!(responses.len(), 1 + hrefs.len(), "{answer}");
    for propstat in responses[0]
        .children
        .iter()
        .filter(|c| is(c, DAV, "propstat"))
    {
        let prop = propstat
            .children
            .iter()
            .find(|c| is(c, DAV, "prop"))
            .expect("a propstat has a prop");
        let named: Vec<(String, String)> = prop
            .children
            .iter()
            .map(|c| (unescaped(&c.ns), c.name.clone()))
            .collect();
        assert_eq!(named, props, "{answer}");
    }
    for (response, href) in responses[1..].iter().zip(&hrefs) {
        let echoed = response
            .children
            .iter()
            .find(|c| is(c, DAV, "href"))
            .expect("an href");
        // A CR in an href came from a character reference; the answer escapes it.
        assert_eq!(echoed.text, *href, "{answer}");
    }
    // sync-collection
    if let Some(token) = root.children.iter().find(|c| is(c, DAV, "sync-token")) {
        let _ = parse_sync_token(token.text.trim());
    }
    // calendar-query
    if query_filter(&root).is_ok() {
        let _ = query_admits(&root, EVENT).expect("the same filter reads again");
    }
    // PROPPATCH (set, remove) and MKCOL (set)
    for action in &root.children {
        for prop in action
            .children
            .iter()
            .filter(|c| is(c, DAV, "prop"))
            .flat_map(|p| &p.children)
        {
            let _ = settable_prop(&prop.ns, &prop.name, Some(prop.text.trim().to_owned()));
            let _ = settable_prop(&prop.ns, &prop.name, None);
        }
    }
});
