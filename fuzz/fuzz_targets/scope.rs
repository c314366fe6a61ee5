#![no_main]
//! Grant scopes and filters as a user or a request writes them: never a panic; a
//! parsed scope projects any record without panicking and never shows a field outside
//! its scope.
use hearth_protocol::scope::{FieldPath, Filter, Scope};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let read = parts.next();
    let write = parts.next();
    let filters: Vec<String> = parts
        .next()
        .map(|f| f.split(';').map(str::to_owned).collect())
        .unwrap_or_default();
    let _ = FieldPath::parse(text);
    let _ = Filter::parse(text);
    if let Ok(scope) = Scope::parse(read, write, &filters) {
        let record =
            serde_json::json!({"name": "a", "email": "b", "address": {"city": "c"}, "tag": "work"});
        for (_, collection) in &scope.collections {
            if let Some(projected) = collection.project(record.as_object().expect("object")) {
                for key in projected.keys() {
                    assert!(
                        record.get(key).is_some() || key == "id",
                        "{key} appeared from nowhere"
                    );
                }
            }
            let _ = collection.check_write("c", None, record.as_object().expect("object"), true);
        }
    }
});
