//! Merging collaborative text fields that two devices created apart.
//!
//! A string field becomes collaborative text (an Automerge text object) when it is
//! first edited by characters. Two devices that do this to the same field while apart
//! each create their own text object; when they meet, the field holds both, and
//! Automerge shows one: the other device's edits would be lost. So after changes from
//! another device arrive, every field whose competing values are all text is merged:
//! each losing text's edits (against what it started from) are applied to the winning
//! text, character by character, and the result becomes the field's one value. Two
//! devices doing this at once write equal texts, which then merge to themselves: the
//! repair stops there.

use automerge::{
    AutoCommit, AutomergeError, ObjType, ROOT, ReadDoc, Value, transaction::Transactable,
};
use automerge::{ChangeHash, ObjId};

/// Merges the text-against-text conflicts of record `id`; returns whether it wrote.
pub fn merge_record(doc: &mut AutoCommit, id: &str) -> Result<bool, AutomergeError> {
    let Some((Value::Object(ObjType::Map), record)) = doc.get(ROOT, id)? else {
        return Ok(false);
    };
    let keys: Vec<String> = doc.keys(&record).collect();
    let mut wrote = false;
    for key in keys {
        let values = doc.get_all(&record, key.as_str())?;
        if values.len() < 2
            || !values
                .iter()
                .all(|(v, _)| matches!(v, Value::Object(ObjType::Text)))
        {
            continue;
        }
        // `get_all` lists the winner last.
        let texts: Vec<ObjId> = values.into_iter().map(|(_, obj)| obj).collect();
        let (winner, losers) = texts.split_last().expect("two values or more");
        let current = doc.text(winner)?;
        let mut merged = current.clone();
        let mut known = true;
        for loser in losers {
            let Some(base) = initial_text(doc, loser)? else {
                known = false;
                break;
            };
            merged = merge3(&base, &merged, &doc.text(loser)?);
        }
        // Without a loser's starting point its edits cannot be told apart from what
        // it started with: leave the field as it is (a person can resolve it).
        if !known {
            tracing::warn!(
                record = id,
                field = key,
                "cannot merge two texts: a starting point is missing"
            );
            continue;
        }
        if merged != current {
            let text = doc.put_object(&record, key.as_str(), ObjType::Text)?;
            doc.splice_text(&text, 0, 0, &merged)?;
            wrote = true;
        }
    }
    Ok(wrote)
}

/// The text an object held when it was made: the change that creates a text object
/// writes what it starts with, and nothing else (`records::edit_text` commits the
/// conversion on its own; a merge writes only merged texts).
fn initial_text(doc: &mut AutoCommit, obj: &ObjId) -> Result<Option<String>, AutomergeError> {
    let ObjId::Id(counter, actor, _) = obj else {
        return Ok(None);
    };
    let created: Option<ChangeHash> = doc
        .get_changes(&[])
        .into_iter()
        .find(|c| {
            c.actor_id() == actor
                && c.start_op().get() <= *counter
                && *counter < c.start_op().get() + c.len() as u64
        })
        .map(|c| c.hash());
    match created {
        Some(hash) => Ok(Some(doc.text_at(obj, &[hash])?)),
        None => Ok(None),
    }
}

/// What became of one character of the base, and what was inserted before it.
#[derive(Default, Clone)]
struct Slot {
    /// Characters inserted just before this base character (or at the end).
    inserted: Vec<char>,
    deleted: bool,
}

/// Each base character's fate in `edited`, plus insertions (`len + 1` slots; the last
/// holds what was appended).
fn slots(base: &[char], edited: &[char]) -> Vec<Slot> {
    let mut slots = vec![Slot::default(); base.len() + 1];
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, base, edited) {
        match op {
            similar::DiffOp::Equal { .. } => {}
            similar::DiffOp::Delete {
                old_index, old_len, ..
            } => {
                for slot in &mut slots[old_index..old_index + old_len] {
                    slot.deleted = true;
                }
            }
            similar::DiffOp::Insert {
                old_index,
                new_index,
                new_len,
            } => slots[old_index]
                .inserted
                .extend_from_slice(&edited[new_index..new_index + new_len]),
            similar::DiffOp::Replace {
                old_index,
                old_len,
                new_index,
                new_len,
            } => {
                slots[old_index]
                    .inserted
                    .extend_from_slice(&edited[new_index..new_index + new_len]);
                for slot in &mut slots[old_index..old_index + old_len] {
                    slot.deleted = true;
                }
            }
        }
    }
    slots
}

/// A three-way merge by characters: both sides' insertions are kept (ours first where
/// both inserted at one place), a character either side deleted is gone.
pub fn merge3(base: &str, ours: &str, theirs: &str) -> String {
    let base: Vec<char> = base.chars().collect();
    let ours_chars: Vec<char> = ours.chars().collect();
    let theirs_chars: Vec<char> = theirs.chars().collect();
    let a = slots(&base, &ours_chars);
    let b = slots(&base, &theirs_chars);
    let mut out = String::with_capacity(ours.len() + theirs.len());
    for i in 0..=base.len() {
        out.extend(&a[i].inserted);
        // The same insertion on both sides is one insertion.
        if b[i].inserted != a[i].inserted {
            out.extend(&b[i].inserted);
        }
        if i < base.len() && !a[i].deleted && !b[i].deleted {
            out.push(base[i]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_edits_are_kept() {
        assert_eq!(
            merge3("hello world", "hello brave world", "hello world!"),
            "hello brave world!"
        );
        assert_eq!(merge3("abc", "xabc", "abcy"), "xabcy");
        assert_eq!(merge3("abc", "ac", "abc"), "ac");
        assert_eq!(merge3("abc", "abc", "a"), "a");
        assert_eq!(merge3("abc", "abXc", "abYc"), "abXYc");
        assert_eq!(merge3("same", "same!", "same!"), "same!");
        assert_eq!(merge3("", "ours", "theirs"), "ourstheirs");
        assert_eq!(
            merge3("日本語", "日本語です", "こんにちは日本語"),
            "こんにちは日本語です"
        );
        assert_eq!(merge3("x", "x", "x"), "x");
    }

    fn text_field(doc: &mut AutoCommit, record: &ObjId, value: &str) -> ObjId {
        let text = doc.put_object(record, "note", ObjType::Text).unwrap();
        doc.splice_text(&text, 0, 0, value).unwrap();
        // As `records::edit_text` does: the conversion is a change of its own.
        doc.commit();
        text
    }

    /// Two documents that each turn the same string into text and edit it, merged:
    /// the repair keeps both edits, and both sides repairing at once settle.
    #[test]
    fn texts_made_apart_merge() {
        let mut a = AutoCommit::new();
        let record = a.put_object(ROOT, "r1", ObjType::Map).unwrap();
        a.put(&record, "note", "buy milk").unwrap();
        let mut b = a.fork();
        let ta = text_field(&mut a, &record, "buy milk");
        a.splice_text(&ta, 0, 0, "please ").unwrap();
        let tb = text_field(&mut b, &record, "buy milk");
        b.splice_text(&tb, 8, 0, " and eggs").unwrap();
        a.merge(&mut b).unwrap();
        b.merge(&mut a.clone()).unwrap();
        assert!(merge_record(&mut a, "r1").unwrap());
        assert!(merge_record(&mut b, "r1").unwrap());
        let expected = "please buy milk and eggs";
        for doc in [&a, &b] {
            let (_, text) = doc.get(&record, "note").unwrap().unwrap();
            assert_eq!(doc.text(&text).unwrap(), expected);
        }
        // Each wrote the merged text: they meet again, and it is left alone.
        a.merge(&mut b).unwrap();
        assert!(!merge_record(&mut a, "r1").unwrap());
        let (_, text) = a.get(&record, "note").unwrap().unwrap();
        assert_eq!(a.text(&text).unwrap(), expected);
        // A text against a plain string is not this repair's to decide.
        let mut c = a.fork();
        let mut d = a.fork();
        c.put(&record, "note", "plain").unwrap();
        let td = a.get(&record, "note").unwrap().unwrap().1;
        d.splice_text(&td, 0, 0, "x").unwrap();
        c.merge(&mut d).unwrap();
        let _ = c.get_all(&record, "note").unwrap();
        assert!(!merge_record(&mut c, "r1").unwrap());
    }

    /// An edit refused (out of range) leaves a string field a string: the conversion
    /// to text is committed on its own, so it must not happen before the edits pass.
    #[test]
    fn a_refused_edit_leaves_a_string_a_string() {
        let mut doc = AutoCommit::new();
        let record = doc.put_object(ROOT, "r1", ObjType::Map).unwrap();
        doc.put(&record, "note", "abc").unwrap();
        doc.commit();
        let heads = doc.get_heads();
        let bad = [crate::records::TextEdit {
            position: 9,
            delete: 0,
            insert: "x".into(),
        }];
        assert!(crate::records::edit_text(&mut doc, "r1", "note", &bad).is_err());
        assert!(crate::records::edit_text(&mut doc, "r1", "missing", &bad).is_err());
        doc.rollback();
        assert!(matches!(
            doc.get(&record, "note").unwrap().unwrap().0,
            Value::Scalar(_)
        ));
        assert!(doc.get(&record, "missing").unwrap().is_none());
        assert_eq!(doc.get_heads(), heads);
    }
}
