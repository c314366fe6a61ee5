//! Grant scopes: what a service may see and change, and how a record is projected into
//! its view. Pure functions, so the rules are the same wherever they are checked.
//!
//! A scope lists collections; for each: the fields granted (all, or a set of dotted
//! paths such as `address.city`), an optional record filter (every `FIELD=VALUE` must
//! match), and whether it may read and write. From the command line:
//! `--read contacts.name,contacts.email,calendar --write notes --where tag=work`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::names::CollectionName;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ScopeError {
    #[error(
        "scope {0:?} is invalid: use COLLECTION or COLLECTION.FIELD[.FIELD...], comma-separated"
    )]
    Malformed(String),
    #[error("scope names {0:?}: {1}")]
    Collection(String, String),
    #[error("collection {0} belongs to the system and cannot be granted")]
    System(String),
    #[error("filter {0:?} is invalid: use FIELD=VALUE")]
    Filter(String),
    #[error("the scope grants nothing: give --read or --write")]
    Empty,
}

/// A dotted path to a field, e.g. `address.city`. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(path: &str) -> Option<Self> {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        let valid = parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 128
                && p.chars()
                    .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
        });
        (valid && parts.len() <= 16 && path != "id").then_some(Self(parts))
    }

    pub fn parts(&self) -> &[String] {
        &self.0
    }

    /// Whether `self` is `other` or lies inside it.
    pub fn within(&self, other: &FieldPath) -> bool {
        self.0.starts_with(&other.0)
    }
}

impl TryFrom<String> for FieldPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        FieldPath::parse(&s).ok_or_else(|| format!("invalid field path {s:?}"))
    }
}

impl From<FieldPath> for String {
    fn from(p: FieldPath) -> String {
        p.0.join(".")
    }
}

impl std::fmt::Display for FieldPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Which fields of a record are granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fields {
    All,
    Only(BTreeSet<FieldPath>),
}

impl Fields {
    /// Whether the field at `path` (or all of it) is granted.
    pub fn covers(&self, path: &FieldPath) -> bool {
        match self {
            Fields::All => true,
            Fields::Only(set) => set.iter().any(|granted| path.within(granted)),
        }
    }

    fn union(&mut self, other: Fields) {
        match (&mut *self, other) {
            (Fields::All, _) => {}
            (_, Fields::All) => *self = Fields::All,
            (Fields::Only(a), Fields::Only(b)) => a.extend(b),
        }
    }
}

/// `FIELD=VALUE`: the record's field equals VALUE (or, for an array, contains it).
/// VALUE is compared as JSON when it parses as JSON (`n=3`, `done=true`), else as text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    pub field: FieldPath,
    pub value: Value,
}

impl Filter {
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let (field, value) = text
            .split_once('=')
            .ok_or_else(|| ScopeError::Filter(text.to_owned()))?;
        let field =
            FieldPath::parse(field.trim()).ok_or_else(|| ScopeError::Filter(text.to_owned()))?;
        let value = match serde_json::from_str::<Value>(value) {
            Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Null)) => v,
            _ => Value::String(value.to_owned()),
        };
        Ok(Self { field, value })
    }

    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        match lookup(record, &self.field) {
            Some(Value::Array(items)) => items.contains(&self.value),
            Some(found) => *found == self.value,
            None => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionScope {
    pub fields: Fields,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filter: Vec<Filter>,
    pub read: bool,
    pub write: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scope {
    pub collections: BTreeMap<String, CollectionScope>,
}

impl Scope {
    /// Builds a scope from `--read`, `--write` and `--where` arguments. Filters apply to
    /// every granted collection. Collections may be named before they hold any data.
    pub fn parse(
        read: Option<&str>,
        write: Option<&str>,
        filters: &[String],
    ) -> Result<Self, ScopeError> {
        let filter: Vec<Filter> = filters
            .iter()
            .map(|f| Filter::parse(f))
            .collect::<Result<_, _>>()?;
        let mut scope = Scope::default();
        for (list, is_write) in [(read, false), (write, true)] {
            for item in list
                .into_iter()
                .flat_map(|l| l.split(','))
                .map(str::trim)
                .filter(|s| !s.is_empty())
            {
                let (collection, field) = match item.split_once('.') {
                    Some((c, f)) => (
                        c,
                        Some(
                            FieldPath::parse(f)
                                .ok_or_else(|| ScopeError::Malformed(item.to_owned()))?,
                        ),
                    ),
                    None => (item, None),
                };
                let name = CollectionName::parse(collection)
                    .map_err(|e| ScopeError::Collection(item.to_owned(), e.to_string()))?;
                if name.is_system() {
                    return Err(ScopeError::System(name.to_string()));
                }
                let fields = match field {
                    Some(path) => Fields::Only(BTreeSet::from([path])),
                    None => Fields::All,
                };
                let entry = scope
                    .collections
                    .entry(name.to_string())
                    .or_insert_with(|| CollectionScope {
                        fields: Fields::Only(BTreeSet::new()),
                        filter: filter.clone(),
                        read: false,
                        write: false,
                    });
                entry.fields.union(fields);
                if is_write {
                    entry.write = true;
                } else {
                    entry.read = true;
                }
            }
        }
        if scope.collections.is_empty() {
            return Err(ScopeError::Empty);
        }
        Ok(scope)
    }

    pub fn collection(&self, name: &str) -> Option<&CollectionScope> {
        self.collections.get(name)
    }
}

impl CollectionScope {
    /// The record as this scope sees it, or `None` if the filter hides it. The `"id"`
    /// is kept; every other field only if granted (nested paths keep their subtree).
    pub fn project(&self, record: &Map<String, Value>) -> Option<Map<String, Value>> {
        if !self.filter.iter().all(|f| f.matches(record)) {
            return None;
        }
        let mut out = Map::new();
        if let Some(id) = record.get("id") {
            out.insert("id".into(), id.clone());
        }
        match &self.fields {
            Fields::All => out.extend(
                record
                    .iter()
                    .filter(|(k, _)| *k != "id")
                    .map(|(k, v)| (k.clone(), v.clone())),
            ),
            Fields::Only(paths) => {
                for path in paths {
                    if let Some(value) = lookup(record, path) {
                        insert_at(&mut out, path.parts(), value.clone());
                    }
                }
            }
        }
        Some(out)
    }

    /// The fields (as dotted paths, top level where the whole is granted) a projection shows.
    pub fn field_names(&self, record: &Map<String, Value>) -> Vec<String> {
        match &self.fields {
            Fields::All => record.keys().filter(|k| *k != "id").cloned().collect(),
            Fields::Only(paths) => paths
                .iter()
                .filter(|p| lookup(record, p).is_some())
                .map(|p| p.to_string())
                .collect(),
        }
    }

    /// Checks that a write (a record or a merge patch) touches only granted fields.
    /// Returns the first field outside the scope.
    pub fn check_write(&self, body: &Map<String, Value>) -> Result<(), String> {
        if !self.write {
            return Err("the grant does not allow writing this collection".into());
        }
        let mut leaves = Vec::new();
        leaf_paths(body, &mut Vec::new(), &mut leaves);
        for path in leaves {
            if path.parts().first().is_some_and(|p| p == "id") {
                continue;
            }
            if !self.fields.covers(&path) {
                return Err(format!("field {path} is outside the grant"));
            }
        }
        Ok(())
    }
}

fn lookup<'a>(record: &'a Map<String, Value>, path: &FieldPath) -> Option<&'a Value> {
    let (first, rest) = path.parts().split_first()?;
    let mut value = record.get(first)?;
    for part in rest {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn insert_at(out: &mut Map<String, Value>, parts: &[String], value: Value) {
    match parts {
        [] => {}
        [last] => {
            out.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let child = out
                .entry(first.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(map) = child {
                insert_at(map, rest, value);
            }
        }
    }
}

/// Paths of the leaves of a JSON object (an object value that is empty is a leaf).
fn leaf_paths(map: &Map<String, Value>, prefix: &mut Vec<String>, out: &mut Vec<FieldPath>) {
    for (key, value) in map {
        prefix.push(key.clone());
        match value {
            Value::Object(inner) if !inner.is_empty() => leaf_paths(inner, prefix, out),
            _ => out.push(FieldPath(prefix.clone())),
        }
        prefix.pop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn parses_scopes() {
        let s = Scope::parse(
            Some("contacts.name,contacts.address.city,calendar"),
            Some("notes"),
            &["tag=work".into()],
        )
        .unwrap();
        let contacts = s.collection("contacts").unwrap();
        assert!(contacts.read && !contacts.write);
        assert_eq!(
            contacts.fields,
            Fields::Only(BTreeSet::from([
                FieldPath::parse("name").unwrap(),
                FieldPath::parse("address.city").unwrap()
            ]))
        );
        assert_eq!(s.collection("calendar").unwrap().fields, Fields::All);
        let notes = s.collection("notes").unwrap();
        assert!(notes.write && !notes.read);
        assert_eq!(
            notes.filter,
            vec![Filter {
                field: FieldPath::parse("tag").unwrap(),
                value: json!("work")
            }]
        );
        assert_eq!(
            Scope::parse(Some("contacts,contacts.name"), None, &[])
                .unwrap()
                .collection("contacts")
                .unwrap()
                .fields,
            Fields::All
        );

        assert!(matches!(
            Scope::parse(None, None, &[]),
            Err(ScopeError::Empty)
        ));
        assert!(matches!(
            Scope::parse(Some("Bad"), None, &[]),
            Err(ScopeError::Collection(..))
        ));
        assert!(matches!(
            Scope::parse(Some("_access"), None, &[]),
            Err(ScopeError::System(_))
        ));
        assert!(matches!(
            Scope::parse(Some("contacts..x"), None, &[]),
            Err(ScopeError::Malformed(_))
        ));
        assert!(matches!(
            Scope::parse(Some("contacts"), None, &["nofilter".into()]),
            Err(ScopeError::Filter(_))
        ));
        assert_eq!(Filter::parse("n=3").unwrap().value, json!(3));
        assert_eq!(Filter::parse("done=true").unwrap().value, json!(true));
    }

    #[test]
    fn projects_and_filters() {
        let s = Scope::parse(
            Some("contacts.name,contacts.address.city"),
            None,
            &["tag=work".into()],
        )
        .unwrap();
        let c = s.collection("contacts").unwrap();
        let rec = obj(
            json!({"id": "a", "name": "Ada", "email": "x", "tag": ["work", "math"], "address": {"city": "London", "street": "1 Main"}}),
        );
        assert_eq!(
            c.project(&rec).unwrap(),
            obj(json!({"id": "a", "name": "Ada", "address": {"city": "London"}}))
        );
        let other = obj(json!({"id": "b", "name": "Bob", "tag": "home"}));
        assert_eq!(c.project(&other), None);
        let missing = obj(json!({"id": "c", "name": "Cy"}));
        assert_eq!(
            c.project(&missing),
            None,
            "a filter on a missing field matches nothing"
        );
    }

    #[test]
    fn writes_stay_inside_the_fields() {
        let s = Scope::parse(Some("notes"), Some("notes.title,notes.meta.color"), &[]).unwrap();
        let n = s.collection("notes").unwrap();
        // Reading all of notes also grants writing all of notes here (fields union).
        assert!(n.check_write(&obj(json!({"body": "x"}))).is_ok());
        let w = Scope::parse(None, Some("tasks.title,tasks.meta.color"), &[]).unwrap();
        let t = w.collection("tasks").unwrap();
        assert!(
            t.check_write(&obj(json!({"title": "x", "meta": {"color": "red"}})))
                .is_ok()
        );
        assert_eq!(
            t.check_write(&obj(json!({"meta": {"size": 1}}))),
            Err("field meta.size is outside the grant".into())
        );
        assert!(t.check_write(&obj(json!({"secret": 1}))).is_err());
        let r = Scope::parse(Some("tasks"), None, &[]).unwrap();
        assert!(
            r.collection("tasks")
                .unwrap()
                .check_write(&obj(json!({"title": "x"})))
                .is_err()
        );
    }

    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("c".to_owned()),
            Just("tag".to_owned())
        ]
    }

    fn record() -> impl Strategy<Value = Map<String, Value>> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            prop_oneof![Just("work"), Just("home")].prop_map(Value::from)
        ];
        let value = leaf.prop_recursive(2, 8, 3, move |inner| {
            proptest::collection::btree_map(field(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        });
        proptest::collection::btree_map(field(), value, 0..4).prop_map(|m| {
            let mut map: Map<String, Value> = m.into_iter().collect();
            map.insert("id".into(), json!("r"));
            map
        })
    }

    fn paths() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(
            (field(), proptest::option::of(field())).prop_map(|(a, b)| match b {
                Some(b) => format!("{a}.{b}"),
                None => a,
            }),
            0..3,
        )
    }

    proptest! {
        /// A view never shows a field outside the grant or a record the filter rejects,
        /// and always shows every granted field of every matching record.
        #[test]
        fn views_show_exactly_the_scope(rec in record(), granted in paths(), whole in any::<bool>(), filter in proptest::option::of(prop_oneof![Just("tag=work"), Just("a=1"), Just("b.c=home")])) {
            let read = if whole || granted.is_empty() { "col".to_owned() } else { granted.iter().map(|p| format!("col.{p}")).collect::<Vec<_>>().join(",") };
            let filters: Vec<String> = filter.iter().map(|f| f.to_string()).collect();
            let scope = Scope::parse(Some(&read), None, &filters).unwrap();
            let c = scope.collection("col").unwrap();
            let matches = filters.iter().all(|f| Filter::parse(f).unwrap().matches(&rec));
            match c.project(&rec) {
                None => prop_assert!(!matches),
                Some(view) => {
                    prop_assert!(matches);
                    // Nothing outside: every leaf of the view is granted and equals the record's.
                    let mut leaves = Vec::new();
                    leaf_paths(&view, &mut Vec::new(), &mut leaves);
                    for leaf in &leaves {
                        if leaf.parts() == ["id"] { continue; }
                        prop_assert!(c.fields.covers(leaf), "{leaf} leaked");
                        prop_assert_eq!(lookup(&view, leaf), lookup(&rec, leaf));
                    }
                    // Everything inside: every granted path present in the record is shown.
                    if let Fields::Only(set) = &c.fields {
                        for path in set {
                            if let Some(v) = lookup(&rec, path) {
                                prop_assert_eq!(lookup(&view, path), Some(v));
                            }
                        }
                    } else {
                        prop_assert_eq!(&view, &rec);
                    }
                }
            }
        }

        #[test]
        fn parsing_never_panics(read in ".{0,40}", filter in ".{0,20}") {
            let _ = Scope::parse(Some(&read), Some(&read), &[filter]);
        }
    }
}
