//! The filters of addressbook-query (RFC 6352 §10.5) and calendar-query (RFC 4791
//! §9.7), applied to the text a caller is served: components, properties and
//! parameters, each defined or not (`is-not-defined`), text matched under a collation
//! (`i;ascii-casemap`, `i;unicode-casemap`, `i;octet`; negated or not; for cards also
//! equals, starts-with and ends-with), and time ranges — of components (recurrences
//! included, for the components directly in the calendar) and of date-time properties.
//!
//! What this server cannot apply is refused, never ignored (a client that gets more than
//! it asked for shows it): an element it does not know inside a filter is the
//! `supported-filter` precondition, a collation it does not know `supported-collation`.

use super::{CAL, CARD, Element};
use crate::pim::{self, Kind, lines};

/// Why a filter is refused: the precondition element (`supported-filter`,
/// `supported-collation`) and what is wrong.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unsupported {
    pub(super) condition: &'static str,
    pub(super) message: String,
}

fn unsupported(message: String) -> Unsupported {
    Unsupported {
        condition: "supported-filter",
        message,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Collation {
    Octet,
    AsciiCasemap,
    UnicodeCasemap,
}

impl Collation {
    fn fold(self, text: &str) -> String {
        match self {
            Collation::Octet => text.to_owned(),
            Collation::AsciiCasemap => text.to_ascii_lowercase(),
            Collation::UnicodeCasemap => text.to_lowercase(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MatchType {
    Equals,
    Contains,
    StartsWith,
    EndsWith,
}

#[derive(Debug)]
struct TextMatch {
    /// Folded by the collation.
    text: String,
    collation: Collation,
    match_type: MatchType,
    negate: bool,
}

impl TextMatch {
    fn of(element: &Element, ns: &str, default: Collation) -> Result<TextMatch, Unsupported> {
        let collation = match element.attribute("collation") {
            None => default,
            Some("i;octet") => Collation::Octet,
            Some("i;ascii-casemap") => Collation::AsciiCasemap,
            Some("i;unicode-casemap") => Collation::UnicodeCasemap,
            Some(other) => {
                return Err(Unsupported {
                    condition: "supported-collation",
                    message: format!(
                        "collation {other:?} is not supported here (i;ascii-casemap, i;unicode-casemap and i;octet are)"
                    ),
                });
            }
        };
        let match_type = match element.attribute("match-type") {
            None | Some("contains") => MatchType::Contains,
            Some("equals") if ns == CARD => MatchType::Equals,
            Some("starts-with") if ns == CARD => MatchType::StartsWith,
            Some("ends-with") if ns == CARD => MatchType::EndsWith,
            Some(other) => {
                return Err(unsupported(format!(
                    "text-match match-type {other:?} is not supported here"
                )));
            }
        };
        let negate = match element.attribute("negate-condition") {
            None | Some("no") => false,
            Some("yes") => true,
            Some(other) => {
                return Err(unsupported(format!(
                    "negate-condition {other:?} is neither yes nor no"
                )));
            }
        };
        Ok(TextMatch {
            text: collation.fold(&element.text),
            collation,
            match_type,
            negate,
        })
    }

    fn matches(&self, value: &str) -> bool {
        let value = self.collation.fold(value);
        let hit = match self.match_type {
            MatchType::Equals => value == self.text,
            MatchType::Contains => value.contains(&self.text),
            MatchType::StartsWith => value.starts_with(&self.text),
            MatchType::EndsWith => value.ends_with(&self.text),
        };
        hit != self.negate
    }
}

#[derive(Debug)]
struct ParamFilter {
    name: String,
    not_defined: bool,
    text: Option<TextMatch>,
}

#[derive(Debug)]
struct PropFilter {
    name: String,
    not_defined: bool,
    /// For cards: whether every condition must hold (`test="allof"`), else any.
    all_of: bool,
    texts: Vec<TextMatch>,
    range: Option<(i64, i64)>,
    params: Vec<ParamFilter>,
}

#[derive(Debug)]
struct CompFilter {
    name: String,
    not_defined: bool,
    range: Option<(i64, i64)>,
    props: Vec<PropFilter>,
    comps: Vec<CompFilter>,
}

/// A parsed query filter.
#[derive(Debug)]
pub(super) struct Query(Filter);

#[derive(Debug)]
enum Filter {
    /// No filter: everything.
    All,
    Card {
        all_of: bool,
        props: Vec<PropFilter>,
    },
    Calendar(CompFilter),
}

fn name_of(element: &Element) -> Result<String, Unsupported> {
    element
        .attribute("name")
        .map(str::to_ascii_uppercase)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| unsupported(format!("a {} without a name", element.name)))
}

fn test_of(element: &Element) -> Result<bool, Unsupported> {
    match element.attribute("test") {
        None | Some("anyof") => Ok(false),
        Some("allof") => Ok(true),
        Some(other) => Err(unsupported(format!(
            "test {other:?} is neither anyof nor allof"
        ))),
    }
}

fn range_of(element: &Element) -> Result<(i64, i64), Unsupported> {
    let at = |name: &str, default: i64| match element.attribute(name) {
        Some(text) => super::parse_utc(text).ok_or_else(|| {
            unsupported(format!(
                "time-range {name}=\"{text}\" is not a UTC date-time"
            ))
        }),
        None => Ok(default),
    };
    let range = (at("start", i64::MIN / 2)?, at("end", i64::MAX / 2)?);
    if element.attribute("start").is_none() && element.attribute("end").is_none() {
        return Err(unsupported("a time-range needs a start or an end".into()));
    }
    Ok(range)
}

fn param_filter(
    element: &Element,
    ns: &str,
    default: Collation,
) -> Result<ParamFilter, Unsupported> {
    let mut filter = ParamFilter {
        name: name_of(element)?,
        not_defined: false,
        text: None,
    };
    for child in &element.children {
        if child.is(ns, "is-not-defined") {
            filter.not_defined = true;
        } else if child.is(ns, "text-match") && filter.text.is_none() {
            filter.text = Some(TextMatch::of(child, ns, default)?);
        } else {
            return Err(unsupported(format!(
                "{} in a param-filter is not supported here",
                child.name
            )));
        }
    }
    Ok(filter)
}

fn prop_filter(element: &Element, ns: &str, default: Collation) -> Result<PropFilter, Unsupported> {
    let mut filter = PropFilter {
        name: name_of(element)?,
        not_defined: false,
        all_of: test_of(element)?,
        texts: Vec::new(),
        range: None,
        params: Vec::new(),
    };
    for child in &element.children {
        if child.is(ns, "is-not-defined") {
            filter.not_defined = true;
        } else if child.is(ns, "text-match") {
            filter.texts.push(TextMatch::of(child, ns, default)?);
        } else if child.is(ns, "param-filter") {
            filter.params.push(param_filter(child, ns, default)?);
        } else if ns == CAL && child.is(CAL, "time-range") && filter.range.is_none() {
            filter.range = Some(range_of(child)?);
        } else {
            return Err(unsupported(format!(
                "{} in a prop-filter is not supported here",
                child.name
            )));
        }
    }
    if ns == CAL && filter.texts.len() > 1 {
        return Err(unsupported(
            "a calendar prop-filter has at most one text-match".into(),
        ));
    }
    Ok(filter)
}

fn comp_filter(element: &Element, depth: usize) -> Result<CompFilter, Unsupported> {
    let mut filter = CompFilter {
        name: name_of(element)?,
        not_defined: false,
        range: None,
        props: Vec::new(),
        comps: Vec::new(),
    };
    for child in &element.children {
        if child.is(CAL, "is-not-defined") {
            filter.not_defined = true;
        } else if child.is(CAL, "time-range") && filter.range.is_none() {
            // Ranges are worked out for the calendar (any of its components), its
            // components (events, to-dos, journals: recurrences included) and their
            // alarms (when they go off); nothing deeper.
            if depth > 2 || (depth == 2 && filter.name != "VALARM") {
                return Err(unsupported(format!(
                    "a time-range on {} is not supported here (only on a calendar's components)",
                    filter.name
                )));
            }
            filter.range = Some(range_of(child)?);
        } else if child.is(CAL, "prop-filter") {
            filter
                .props
                .push(prop_filter(child, CAL, Collation::AsciiCasemap)?);
        } else if child.is(CAL, "comp-filter") {
            filter.comps.push(comp_filter(child, depth + 1)?);
        } else {
            return Err(unsupported(format!(
                "{} in a comp-filter is not supported here",
                child.name
            )));
        }
    }
    Ok(filter)
}

impl Query {
    /// Reads the `filter` of an addressbook-query or calendar-query (`root`).
    pub(super) fn of(kind: Kind, root: &Element) -> Result<Query, Unsupported> {
        filter_of(kind, root).map(Query)
    }

    /// Whether the object `text` (as the caller is served it) matches.
    pub(super) fn admits(&self, text: &str) -> bool {
        match &self.0 {
            Filter::All => true,
            Filter::Card { all_of, props } => {
                let Some(card) = tree(text) else {
                    // A text this node cannot read is shown rather than hidden.
                    return true;
                };
                let mut results = props.iter().map(|p| prop_matches(p, &card, true));
                if *all_of {
                    results.all(|r| r)
                } else {
                    results.any(|r| r)
                }
            }
            Filter::Calendar(filter) => {
                let Some(calendar) = tree(text) else {
                    return true;
                };
                calendar.name == filter.name
                    && !filter.not_defined
                    && comp_conditions(filter, &calendar, text)
            }
        }
    }
}

/// Reads the `filter` of an addressbook-query or calendar-query (`root`).
fn filter_of(kind: Kind, root: &Element) -> Result<Filter, Unsupported> {
    match kind {
        Kind::Contacts => {
            let Some(filter) = root.child(CARD, "filter") else {
                return Ok(Filter::All);
            };
            let mut props = Vec::new();
            for child in &filter.children {
                if child.is(CARD, "prop-filter") {
                    props.push(prop_filter(child, CARD, Collation::UnicodeCasemap)?);
                } else {
                    return Err(unsupported(format!(
                        "{} in an addressbook-query filter is not supported here",
                        child.name
                    )));
                }
            }
            if props.is_empty() {
                return Ok(Filter::All);
            }
            Ok(Filter::Card {
                all_of: test_of(filter)?,
                props,
            })
        }
        Kind::Calendar => {
            let Some(filter) = root.child(CAL, "filter") else {
                return Ok(Filter::All);
            };
            let mut top = filter.children.iter();
            let (Some(first), None) = (top.next(), top.next()) else {
                return Err(unsupported(
                    "a calendar-query filter holds exactly one comp-filter (VCALENDAR)".into(),
                ));
            };
            if !first.is(CAL, "comp-filter") {
                return Err(unsupported(format!(
                    "{} in a calendar-query filter is not supported here",
                    first.name
                )));
            }
            let filter = comp_filter(first, 0)?;
            if filter.name != "VCALENDAR" {
                return Err(unsupported(format!(
                    "the outer comp-filter names {}, not VCALENDAR",
                    filter.name
                )));
            }
            Ok(Filter::Calendar(filter))
        }
    }
}

/// Whether `comp` meets a comp-filter's conditions (its name already matched).
fn comp_conditions(filter: &CompFilter, comp: &Comp, text: &str) -> bool {
    if let Some((start, end)) = filter.range
        && filter.name == "VALARM"
    {
        // When the alarm goes off (RFC 4791 §9.9): its trigger, relative to each
        // occurrence's start (or end), or absolute, and its repetitions.
        let occurrences = match pim::calendar::parse(text) {
            Ok(ical) => pim::calendar::occurrences(&ical),
            Err(_) => return true,
        };
        if !alarm_times(comp, &occurrences)
            .iter()
            .any(|t| start <= *t && *t < end)
        {
            return false;
        }
    } else if let Some((start, end)) = filter.range {
        // Worked out over the object (one UID's components, its recurrences and
        // overrides), as the server always has.
        let overlaps = match pim::calendar::parse(text) {
            Ok(ical) => pim::calendar::overlaps(&ical, start, end),
            Err(_) => true,
        };
        if !overlaps {
            return false;
        }
    }
    filter.props.iter().all(|p| prop_matches(p, comp, false))
        && filter.comps.iter().all(|c| {
            let mut children = comp.comps.iter().filter(|child| child.name == c.name);
            if c.not_defined {
                children.next().is_none()
            } else {
                children.any(|child| comp_conditions(c, child, text))
            }
        })
}

/// When an alarm goes off for each occurrence `(start, end)` of its component.
fn alarm_times(alarm: &Comp, occurrences: &[(i64, i64)]) -> Vec<i64> {
    let Some(trigger) = alarm.props.iter().find(|p| p.name == "TRIGGER") else {
        return Vec::new();
    };
    let param = |name: &str| {
        trigger
            .params
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, v)| v.first())
            .map(|v| v.to_ascii_uppercase())
    };
    let value = trigger.value.trim();
    let firsts: Vec<i64> = if param("VALUE").as_deref() == Some("DATE-TIME") {
        super::parse_utc(value).into_iter().collect()
    } else {
        let Some(offset) = duration_secs(value) else {
            return Vec::new();
        };
        let at_end = param("RELATED").as_deref() == Some("END");
        occurrences
            .iter()
            .map(|(s, e)| if at_end { e } else { s }.saturating_add(offset))
            .collect()
    };
    let repeat: i64 = alarm
        .props
        .iter()
        .find(|p| p.name == "REPEAT")
        .and_then(|p| p.value.trim().parse().ok())
        .unwrap_or(0)
        .clamp(0, 1000);
    let every = alarm
        .props
        .iter()
        .find(|p| p.name == "DURATION")
        .and_then(|p| duration_secs(p.value.trim()))
        .unwrap_or(0);
    firsts
        .iter()
        .flat_map(|t| (0..=repeat).map(move |k| t.saturating_add(k.saturating_mul(every))))
        .collect()
}

/// An iCalendar duration (`-PT15M`, `P1DT2H`, `P2W`) in seconds.
fn duration_secs(text: &str) -> Option<i64> {
    let (sign, rest) = match text.strip_prefix('-') {
        Some(rest) => (-1, rest),
        None => (1, text.strip_prefix('+').unwrap_or(text)),
    };
    let rest = rest.strip_prefix('P')?;
    let mut total: i64 = 0;
    let mut number = String::new();
    let mut in_time = false;
    for c in rest.chars() {
        match c {
            '0'..='9' => number.push(c),
            'T' if number.is_empty() => in_time = true,
            unit => {
                let n: i64 = number.parse().ok()?;
                number.clear();
                let unit = match (unit, in_time) {
                    ('W', false) => 7 * 86_400,
                    ('D', false) => 86_400,
                    ('H', true) => 3600,
                    ('M', true) => 60,
                    ('S', true) => 1,
                    _ => return None,
                };
                // A client's TRIGGER may be any length: too long is no duration.
                total = total.checked_add(n.checked_mul(unit)?)?;
            }
        }
    }
    number.is_empty().then_some(sign * total)
}

/// Whether a prop-filter holds for `comp` (a card, or a calendar component).
fn prop_matches(filter: &PropFilter, comp: &Comp, card: bool) -> bool {
    let mut props = comp.props.iter().filter(|p| p.name == filter.name);
    if filter.not_defined {
        return props.next().is_none();
    }
    props.any(|prop| {
        let mut tests: Vec<bool> = Vec::new();
        tests.extend(filter.texts.iter().map(|t| t.matches(&prop.value)));
        if let Some((start, end)) = filter.range {
            tests.push(super::parse_utc(&prop.value).is_some_and(|t| start <= t && t < end));
        }
        tests.extend(filter.params.iter().map(|p| param_matches(p, prop)));
        if tests.is_empty() {
            return true;
        }
        if card && !filter.all_of {
            tests.iter().any(|t| *t)
        } else {
            tests.iter().all(|t| *t)
        }
    })
}

fn param_matches(filter: &ParamFilter, prop: &Prop) -> bool {
    let mut values = prop
        .params
        .iter()
        .filter(|(name, _)| *name == filter.name)
        .flat_map(|(_, values)| values);
    if filter.not_defined {
        return values.next().is_none();
    }
    match &filter.text {
        None => values.next().is_some(),
        Some(text) => values.any(|v| text.matches(v)),
    }
}

/// A component of a card or calendar, as the filters read it.
#[derive(Debug, Default)]
struct Comp {
    name: String,
    props: Vec<Prop>,
    comps: Vec<Comp>,
}

#[derive(Debug)]
struct Prop {
    name: String,
    /// Parameter names upper case, values unquoted.
    params: Vec<(String, Vec<String>)>,
    /// The value with its text escapes undone.
    value: String,
}

/// The component tree of a vCard or iCalendar text (its first top component).
fn tree(text: &str) -> Option<Comp> {
    let mut stack: Vec<Comp> = Vec::new();
    for line in lines::split(text) {
        let unfolded = line.unfolded();
        let Some(prop) = prop_of(&unfolded) else {
            continue;
        };
        match prop.name.as_str() {
            "BEGIN" => stack.push(Comp {
                name: prop.value.trim().to_ascii_uppercase(),
                ..Comp::default()
            }),
            "END" => {
                let done = stack.pop()?;
                match stack.last_mut() {
                    Some(parent) => parent.comps.push(done),
                    None => return Some(done),
                }
            }
            _ => stack.last_mut()?.props.push(prop),
        }
    }
    None
}

/// One unfolded content line read into name, parameters and value.
fn prop_of(line: &str) -> Option<Prop> {
    let mut quoted = false;
    let mut colon = None;
    let mut cuts = Vec::new();
    for (i, c) in line.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ';' if !quoted => cuts.push(i),
            ':' if !quoted => {
                colon = Some(i);
                break;
            }
            _ => {}
        }
    }
    let colon = colon?;
    let head = &line[..colon];
    let name_end = cuts.first().copied().unwrap_or(colon);
    let name = head[..name_end]
        .rsplit_once('.')
        .map_or(&head[..name_end], |(_, n)| n)
        .trim()
        .to_ascii_uppercase();
    let mut params = Vec::new();
    let mut bounds = cuts.clone();
    bounds.push(colon);
    for pair in bounds.windows(2) {
        let part = &line[pair[0] + 1..pair[1]];
        let (key, values) = part.split_once('=').unwrap_or(("TYPE", part));
        let mut list = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        for c in values.chars() {
            match c {
                '"' => quoted = !quoted,
                ',' if !quoted => list.push(std::mem::take(&mut current)),
                c => current.push(c),
            }
        }
        list.push(current);
        params.push((key.trim().to_ascii_uppercase(), list));
    }
    Some(Prop {
        name,
        params,
        value: unescape(&line[colon + 1..]),
    })
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n' | 'N') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(kind: Kind, xml: &str) -> Result<Query, Unsupported> {
        let root = super::super::parse_xml(xml.as_bytes()).unwrap().unwrap();
        Query::of(kind, &root)
    }

    fn cal(filter: &str) -> Query {
        query(
            Kind::Calendar,
            &format!(
                r#"<c:calendar-query xmlns:d="DAV:" xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR">{filter}</c:comp-filter></c:filter></c:calendar-query>"#
            ),
        )
        .unwrap()
    }

    fn card(filter: &str, test: &str) -> Query {
        query(
            Kind::Contacts,
            &format!(
                r#"<card:addressbook-query xmlns:d="DAV:" xmlns:card="urn:ietf:params:xml:ns:carddav"><card:filter test="{test}">{filter}</card:filter></card:addressbook-query>"#
            ),
        )
        .unwrap()
    }

    const DENTIST: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:a\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260110T090000Z\r\nSUMMARY:Dentist\\, Dr. Ünal\r\nCATEGORIES:HEALTH\r\nATTENDEE;PARTSTAT=ACCEPTED;CN=\"Ada, L\":mailto:ada@example.org\r\nBEGIN:VALARM\r\nACTION:DISPLAY\r\nTRIGGER:-PT15M\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    const LUNCH: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VEVENT\r\nUID:b\r\nDTSTAMP:20260101T000000Z\r\nDTSTART:20260111T120000Z\r\nSUMMARY:Lunch with the dentist's team\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n";
    const TODO: &str = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//t//EN\r\nBEGIN:VTODO\r\nUID:c\r\nDTSTAMP:20260101T000000Z\r\nSUMMARY:Call the dentist\r\nEND:VTODO\r\nEND:VCALENDAR\r\n";

    fn hits(q: &Query) -> Vec<&'static str> {
        [("dentist", DENTIST), ("lunch", LUNCH), ("todo", TODO)]
            .into_iter()
            .filter(|(_, t)| q.admits(t))
            .map(|(n, _)| n)
            .collect()
    }

    #[test]
    fn calendar_text_matches_are_substrings_under_a_collation() {
        let summary = |text: &str, attrs: &str| {
            cal(&format!(
                r#"<c:comp-filter name="VEVENT"><c:prop-filter name="SUMMARY"><c:text-match {attrs}>{text}</c:text-match></c:prop-filter></c:comp-filter>"#
            ))
        };
        assert_eq!(hits(&summary("Dentist", "")), ["dentist", "lunch"]);
        assert_eq!(
            hits(&summary("DENTIST,", "")),
            ["dentist"],
            "escapes undone"
        );
        assert_eq!(
            hits(&summary("Dentist", r#"collation="i;octet""#)),
            ["dentist"]
        );
        assert_eq!(
            hits(&summary("ünal", r#"collation="i;unicode-casemap""#)),
            ["dentist"]
        );
        assert!(hits(&summary("ünal", r#"collation="i;ascii-casemap""#)).is_empty());
        assert_eq!(
            hits(&summary("dentist", r#"negate-condition="yes""#)),
            Vec::<&str>::new(),
            "both events' summaries name a dentist; the to-do is no event"
        );
        assert_eq!(
            hits(&summary("lunch", r#"negate-condition="yes""#)),
            ["dentist"]
        );
    }

    #[test]
    fn components_properties_and_parameters_defined_or_not() {
        let todo = cal(r#"<c:comp-filter name="VTODO"/>"#);
        assert_eq!(hits(&todo), ["todo"]);
        let no_categories = cal(
            r#"<c:comp-filter name="VEVENT"><c:prop-filter name="CATEGORIES"><c:is-not-defined/></c:prop-filter></c:comp-filter>"#,
        );
        assert_eq!(hits(&no_categories), ["lunch"]);
        let with_alarm =
            cal(r#"<c:comp-filter name="VEVENT"><c:comp-filter name="VALARM"/></c:comp-filter>"#);
        assert_eq!(hits(&with_alarm), ["dentist"]);
        let without_alarm = cal(
            r#"<c:comp-filter name="VEVENT"><c:comp-filter name="VALARM"><c:is-not-defined/></c:comp-filter></c:comp-filter>"#,
        );
        assert_eq!(hits(&without_alarm), ["lunch"]);
        let accepted = cal(
            r#"<c:comp-filter name="VEVENT"><c:prop-filter name="ATTENDEE"><c:param-filter name="PARTSTAT"><c:text-match>accepted</c:text-match></c:param-filter></c:prop-filter></c:comp-filter>"#,
        );
        assert_eq!(hits(&accepted), ["dentist"]);
        let named = cal(
            r#"<c:comp-filter name="VEVENT"><c:prop-filter name="ATTENDEE"><c:param-filter name="CN"><c:text-match>ada, l</c:text-match></c:param-filter></c:prop-filter></c:comp-filter>"#,
        );
        assert_eq!(hits(&named), ["dentist"]);
        let dated = cal(
            r#"<c:comp-filter name="VEVENT"><c:prop-filter name="DTSTART"><c:time-range start="20260111T000000Z" end="20260112T000000Z"/></c:prop-filter></c:comp-filter>"#,
        );
        assert_eq!(hits(&dated), ["lunch"]);
        let ranged = cal(
            r#"<c:comp-filter name="VEVENT"><c:time-range start="20260110T000000Z" end="20260110T235959Z"/></c:comp-filter>"#,
        );
        assert_eq!(hits(&ranged), ["dentist"]);
        assert_eq!(hits(&cal("")), ["dentist", "lunch", "todo"]);
        // An alarm's range is when it goes off: 15 minutes before 09:00.
        let alarm = |start: &str, end: &str| {
            cal(&format!(
                r#"<c:comp-filter name="VEVENT"><c:comp-filter name="VALARM"><c:time-range start="{start}" end="{end}"/></c:comp-filter></c:comp-filter>"#
            ))
        };
        assert_eq!(
            hits(&alarm("20260110T084000Z", "20260110T085000Z")),
            ["dentist"]
        );
        assert!(hits(&alarm("20260110T085000Z", "20260110T100000Z")).is_empty());
        assert_eq!(duration_secs("-PT15M"), Some(-900));
        assert_eq!(duration_secs("P1DT2H"), Some(93_600));
        assert_eq!(duration_secs("P2W"), Some(1_209_600));
        assert_eq!(duration_secs("PT"), Some(0));
        assert_eq!(duration_secs("15M"), None);
        // Lengths no clock holds are no duration, not an overflow.
        assert_eq!(duration_secs("P99999999999999999W"), None);
        assert_eq!(duration_secs("P9223372036854775807DT1S"), None);
        // Repeats and offsets at the edge of time saturate rather than overflow.
        let calendar = tree(
            "BEGIN:VCALENDAR\r\nBEGIN:VEVENT\r\nBEGIN:VALARM\r\nTRIGGER:PT1S\r\nREPEAT:1000\r\nDURATION:P9999999999999W\r\nEND:VALARM\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n",
        )
        .unwrap();
        let times = alarm_times(&calendar.comps[0].comps[0], &[(i64::MAX - 1, i64::MAX)]);
        assert_eq!(times.len(), 1001);
        assert!(times.iter().all(|t| *t == i64::MAX));
    }

    #[test]
    fn card_filters_test_any_or_all_with_match_types() {
        let ada = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:1\r\nFN:Ada Lovelace\r\nEMAIL;TYPE=WORK:ada@example.org\r\nEND:VCARD\r\n";
        let bob = "BEGIN:VCARD\r\nVERSION:3.0\r\nUID:2\r\nFN:Bob Ada-Smith\r\nNICKNAME:bobby\r\nEND:VCARD\r\n";
        let both = |q: &Query| -> Vec<&str> {
            [("ada", ada), ("bob", bob)]
                .into_iter()
                .filter(|(_, t)| q.admits(t))
                .map(|(n, _)| n)
                .collect()
        };
        let fname = |mt: &str, text: &str| {
            card(
                &format!(
                    r#"<card:prop-filter name="FN"><card:text-match match-type="{mt}">{text}</card:text-match></card:prop-filter>"#
                ),
                "anyof",
            )
        };
        assert_eq!(both(&fname("contains", "ada")), ["ada", "bob"]);
        assert_eq!(both(&fname("starts-with", "ada")), ["ada"]);
        assert_eq!(both(&fname("ends-with", "SMITH")), ["bob"]);
        assert_eq!(both(&fname("equals", "ada lovelace")), ["ada"]);
        let work_mail = card(
            r#"<card:prop-filter name="EMAIL"><card:param-filter name="TYPE"><card:text-match match-type="equals">work</card:text-match></card:param-filter></card:prop-filter>"#,
            "anyof",
        );
        assert_eq!(both(&work_mail), ["ada"]);
        let two = r#"<card:prop-filter name="NICKNAME"/><card:prop-filter name="EMAIL"/>"#;
        assert_eq!(both(&card(two, "anyof")), ["ada", "bob"]);
        assert!(both(&card(two, "allof")).is_empty());
        let no_mail = card(
            r#"<card:prop-filter name="EMAIL"><card:is-not-defined/></card:prop-filter>"#,
            "anyof",
        );
        assert_eq!(both(&no_mail), ["bob"]);
    }

    #[test]
    fn what_cannot_be_applied_is_refused_not_ignored() {
        let refused = |kind: Kind, xml: &str| query(kind, xml).unwrap_err();
        let e = refused(
            Kind::Calendar,
            r#"<c:calendar-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:prop-filter name="SUMMARY"><c:text-match collation="i;klingon">x</c:text-match></c:prop-filter></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#,
        );
        assert_eq!(e.condition, "supported-collation");
        for xml in [
            r#"<c:calendar-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:frobnicate/></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#,
            r#"<c:calendar-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VTODO"/></c:filter></c:calendar-query>"#,
            r#"<c:calendar-query xmlns:c="urn:ietf:params:xml:ns:caldav"><c:filter><c:comp-filter name="VCALENDAR"><c:comp-filter name="VEVENT"><c:comp-filter name="VALARM"><c:comp-filter name="X-DEEPER"><c:time-range start="20260101T000000Z"/></c:comp-filter></c:comp-filter></c:comp-filter></c:comp-filter></c:filter></c:calendar-query>"#,
        ] {
            assert_eq!(
                refused(Kind::Calendar, xml).condition,
                "supported-filter",
                "{xml}"
            );
        }
        let e = refused(
            Kind::Contacts,
            r#"<card:addressbook-query xmlns:card="urn:ietf:params:xml:ns:carddav"><card:filter><card:prop-filter name="FN"><card:text-match match-type="sounds-like">x</card:text-match></card:prop-filter></card:filter></card:addressbook-query>"#,
        );
        assert_eq!(e.condition, "supported-filter");
    }
}
