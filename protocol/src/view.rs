//! The remote view protocol `/hearth/view/1`: a service on another machine reads its
//! view over the mesh, where the node knows its PeerId from the Noise handshake (a
//! grant made with `--to PEER_ID` works only from that PeerId).
//!
//! Frames as in [`crate::sync`], each body one JSON object. Request:
//! `{"method": "GET"|"POST", "path": "/v1/view...", "token": "...", "body"?: {...}}`;
//! answer: `{"status": 200, "body": ...}` — the same status and body as the HTTP API.

use serde::{Deserialize, Serialize};

use crate::names::{CollectionName, RecordId};

pub const VIEW_PROTOCOL: &str = "/hearth/view/1";
/// Largest request accepted on the view protocol.
pub const MAX_VIEW_REQUEST: usize = 2 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewRequest {
    pub method: String,
    pub path: String,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewResponse {
    pub status: u16,
    pub body: serde_json::Value,
}

/// A view request, as both the HTTP routes and `/hearth/view/1` name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewRoute {
    /// `GET /v1/view`
    All,
    /// `GET /v1/view/{c}`
    Collection(CollectionName),
    /// `GET /v1/view/{c}/{id}`
    Record(CollectionName, RecordId),
    /// `POST /v1/view/{c}`
    Write(CollectionName),
    /// `DELETE /v1/view/{c}/{id}`
    Remove(CollectionName, RecordId),
}

/// Why a view request names no view route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    #[error("only the /v1/view routes are served over the mesh")]
    NotAView,
    #[error("event streams are not served over the mesh yet")]
    Events,
    #[error("{0} does not take method {1}")]
    Method(String, String),
    #[error("{0}")]
    Collection(String),
    #[error("{0}")]
    Id(String),
}

impl ViewRoute {
    /// Parses a request line of the view protocol. Names are taken as they are (no
    /// percent-decoding): valid collection names and record ids need none.
    pub fn parse(method: &str, path: &str) -> Result<Self, RouteError> {
        let rest = match path.strip_prefix("/v1/view") {
            Some("") => return Self::with_method(method, "GET", path, ViewRoute::All),
            Some(rest) => rest.strip_prefix('/').ok_or(RouteError::NotAView)?,
            None => return Err(RouteError::NotAView),
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let collection = |name: &str| {
            CollectionName::parse(name).map_err(|e| RouteError::Collection(e.to_string()))
        };
        let id = |id: &str| RecordId::parse(id).map_err(|e| RouteError::Id(e.to_string()));
        match parts.as_slice() {
            ["events"] => Err(RouteError::Events),
            [c] => match method {
                "GET" => Ok(ViewRoute::Collection(collection(c)?)),
                "POST" => Ok(ViewRoute::Write(collection(c)?)),
                other => Err(RouteError::Method(path.to_owned(), other.to_owned())),
            },
            [c, i] => match method {
                "GET" => Ok(ViewRoute::Record(collection(c)?, id(i)?)),
                "DELETE" => Ok(ViewRoute::Remove(collection(c)?, id(i)?)),
                other => Err(RouteError::Method(path.to_owned(), other.to_owned())),
            },
            _ => Err(RouteError::NotAView),
        }
    }

    fn with_method(
        method: &str,
        wanted: &str,
        path: &str,
        route: Self,
    ) -> Result<Self, RouteError> {
        if method == wanted {
            Ok(route)
        } else {
            Err(RouteError::Method(path.to_owned(), method.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_nothing_else_does() {
        let c = CollectionName::parse("contacts").unwrap();
        let id = RecordId::parse("ada").unwrap();
        assert_eq!(ViewRoute::parse("GET", "/v1/view"), Ok(ViewRoute::All));
        assert_eq!(
            ViewRoute::parse("GET", "/v1/view/contacts"),
            Ok(ViewRoute::Collection(c.clone()))
        );
        assert_eq!(
            ViewRoute::parse("POST", "/v1/view/contacts"),
            Ok(ViewRoute::Write(c.clone()))
        );
        assert_eq!(
            ViewRoute::parse("GET", "/v1/view/contacts/ada"),
            Ok(ViewRoute::Record(c.clone(), id.clone()))
        );
        assert_eq!(
            ViewRoute::parse("DELETE", "/v1/view/contacts/ada"),
            Ok(ViewRoute::Remove(c, id))
        );
        for (method, path) in [
            ("GET", "/v1/grants"),
            ("GET", "/v1/viewx"),
            ("GET", "/v1/view/contacts/ada/x"),
            ("GET", "/v1/view/../grants"),
            ("GET", "/v1/view/Contacts"),
            ("GET", "/v1/view/contacts/..%2f"),
            ("PUT", "/v1/view/contacts"),
            ("POST", "/v1/view"),
            ("GET", "/v1/view/events"),
            ("GET", "/v1/view/"),
        ] {
            assert!(ViewRoute::parse(method, path).is_err(), "{method} {path}");
        }
    }
}
