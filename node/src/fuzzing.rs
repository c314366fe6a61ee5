//! Thin doors into private decoders of untrusted bytes, for the cargo-fuzz targets in
//! `fuzz/` only: not an API, no stability promised. Each function calls the code the
//! node runs, unchanged, and hands back plain data.

pub use crate::dav::fuzzing::{
    WantedProps, XmlElement, dav_href, dav_xml, multistatus_of, query_admits, query_filter,
    settable_prop, wanted_props,
};

use crate::pim::Kind;

/// A DAV sync token read into the log position it names (epoch, entry;
/// `access::dav::parse_token`).
pub fn parse_sync_token(token: &str) -> Result<(u64, u64), String> {
    crate::access::dav::parse_token(token)
        .map(|at| (at.epoch, at.seq))
        .map_err(|e| e.to_string())
}

/// The sync token of a log position (`access::dav::sync_token`).
pub fn sync_token(epoch: u64, seq: u64) -> String {
    crate::access::dav::sync_token(crate::collections::LogPosition { epoch, seq })
}

/// The check a DAV PUT body passes before anything else (`access::dav::check_object`):
/// one object of the collection's kind (for a calendar, the components of one UID).
pub fn check_dav_object(kind: Kind, text: &str) -> Result<(), String> {
    crate::access::dav::check_object(kind, text).map_err(|e| e.to_string())
}
