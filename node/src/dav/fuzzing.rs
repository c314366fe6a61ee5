//! The DAV request-body reader, the parts of PROPFIND, REPORT and PROPPATCH that read
//! its tree, and href parsing, for the `dav_xml` fuzz target (through
//! `crate::fuzzing`). Everything here calls the private functions of `dav` unchanged.

use super::{
    Element, Multistatus, Prop, Wanted, apply_prop, href_of, parse_target, parse_xml, wanted_of,
};
use crate::access::dav::BookProps;
use crate::pim::Kind;

/// A parsed element as plain data (what `parse_xml` makes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XmlElement {
    pub ns: String,
    pub name: String,
    pub attributes: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<XmlElement>,
}

impl XmlElement {
    fn of(e: &Element) -> XmlElement {
        XmlElement {
            ns: e.ns.clone(),
            name: e.name.clone(),
            attributes: e.attributes.clone(),
            text: e.text.clone(),
            children: e.children.iter().map(XmlElement::of).collect(),
        }
    }

    fn element(&self) -> Element {
        Element {
            ns: self.ns.clone(),
            name: self.name.clone(),
            attributes: self.attributes.clone(),
            text: self.text.clone(),
            children: self.children.iter().map(XmlElement::element).collect(),
        }
    }
}

/// A request body read as the server reads it; `None` for an empty body.
pub fn dav_xml(body: &[u8]) -> Result<Option<XmlElement>, String> {
    parse_xml(body)
        .map(|root| root.as_ref().map(XmlElement::of))
        .map_err(|e| format!("{e:?}"))
}

/// Which properties a PROPFIND or REPORT asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WantedProps {
    All,
    Names,
    /// `(namespace, name)` of each.
    These(Vec<(String, String)>),
}

/// What a PROPFIND or REPORT whose body has this root asks for.
pub fn wanted_props(root: Option<&XmlElement>) -> WantedProps {
    let root = root.map(XmlElement::element);
    match wanted_of(root.as_ref()) {
        Wanted::All => WantedProps::All,
        Wanted::Names => WantedProps::Names,
        Wanted::These(props) => {
            WantedProps::These(props.into_iter().map(|p| (p.ns, p.name)).collect())
        }
    }
}

/// The multistatus the server writes naming `props` (found with an empty value, then
/// missing) for `href`, and answering 404 for each of `elsewhere` (hrefs a multiget
/// asked for that are not in the collection), as the request named them.
pub fn multistatus_of(href: &str, props: &[(String, String)], elsewhere: &[String]) -> String {
    let props: Vec<Prop> = props.iter().map(|(ns, name)| Prop::new(ns, name)).collect();
    let found: Vec<(Prop, String)> = props.iter().map(|p| (p.clone(), String::new())).collect();
    let mut out = Multistatus::new();
    out.response(href, &found, &props);
    for h in elsewhere {
        out.status(h, "404 Not Found");
    }
    out.0.push_str("</d:multistatus>\n");
    out.0
}

/// A path or URL read as a DAV target: the target (as debug text) and its canonical
/// href.
pub fn dav_href(href: &str) -> Result<(String, String), String> {
    parse_target(href)
        .map(|t| (format!("{t:?}"), href_of(&t)))
        .map_err(|e| format!("{e:?}"))
}

/// The filter a calendar-query with this root asks for, as read (or why it is
/// refused).
pub fn query_filter(root: &XmlElement) -> Result<String, String> {
    super::query::Query::of(Kind::Calendar, &root.element())
        .map(|q| format!("{q:?}"))
        .map_err(|e| format!("{e:?}"))
}

/// Whether the calendar-query with this root admits a calendar object's text.
pub fn query_admits(root: &XmlElement, text: &str) -> Result<bool, String> {
    super::query::Query::of(Kind::Calendar, &root.element())
        .map(|q| q.admits(text))
        .map_err(|e| format!("{e:?}"))
}

/// Whether PROPPATCH or MKCOL can set (or remove, for `None`) this property.
pub fn settable_prop(ns: &str, name: &str, value: Option<String>) -> bool {
    apply_prop(&mut BookProps::default(), &Prop::new(ns, name), value)
}
