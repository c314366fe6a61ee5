//! Content lines of vCard and iCalendar text, kept exactly as they came.
//!
//! Both formats are a sequence of *content lines* (`[group.]NAME[;params]:value`), long
//! ones folded onto continuation lines that start with a space or a tab (and, in vCard
//! 2.1, quoted-printable values continued by a trailing `=`). This module only cuts
//! text into such lines and reads each line's name and group — it interprets no value
//! (that is `calcard`'s job) — so that a record can keep its original text and change
//! only the lines of the fields that changed, leaving every other line byte for byte.

/// One content line: its bytes as they were (folded, with their line ending) and where
/// it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub raw: String,
    /// 1-based line number in the text it came from.
    pub number: usize,
}

impl Line {
    /// The line unfolded: continuation breaks removed, no line ending.
    pub fn unfolded(&self) -> String {
        let mut out = String::with_capacity(self.raw.len());
        let mut rest = self.raw.as_str();
        while let Some(pos) = rest.find('\n') {
            let (head, tail) = rest.split_at(pos);
            out.push_str(head.strip_suffix('\r').unwrap_or(head));
            rest = &tail[1..];
            if let Some(cont) = rest.strip_prefix([' ', '\t']) {
                rest = cont;
            } else if !rest.is_empty() && out.ends_with('=') && is_quoted_printable(&out) {
                // A quoted-printable soft break: the `=` and the break both go.
                out.pop();
            }
        }
        out.push_str(rest.strip_suffix('\r').unwrap_or(rest));
        out
    }

    /// The property name, upper case (`EMAIL`, `BEGIN`, `X-ABLABEL`).
    pub fn name(&self) -> String {
        let unfolded = self.unfolded();
        let head = head_of(&unfolded);
        let name = head.rsplit_once('.').map_or(head, |(_, n)| n);
        name.to_ascii_uppercase()
    }

    /// Whether the property name is `name` (upper case), as [`Line::name`] would say,
    /// without unfolding the line or allocating when the name ends on its first
    /// physical line (it does unless a fold cuts the name itself).
    pub fn is(&self, name: &str) -> bool {
        let first = self.raw.split('\n').next().unwrap_or_default();
        match first.find([';', ':']) {
            Some(end) => {
                let head = first[..end].trim();
                head.rsplit_once('.')
                    .map_or(head, |(_, n)| n)
                    .eq_ignore_ascii_case(name)
            }
            None => self.name() == name,
        }
    }

    /// The group (`item1` of `item1.EMAIL`), if any, as written.
    pub fn group(&self) -> Option<String> {
        let unfolded = self.unfolded();
        head_of(&unfolded)
            .rsplit_once('.')
            .map(|(g, _)| g.to_owned())
    }

    /// The value after the first unquoted `:`, unfolded (for BEGIN/END lines).
    pub fn value(&self) -> String {
        let unfolded = self.unfolded();
        let mut quoted = false;
        for (i, c) in unfolded.char_indices() {
            match c {
                '"' => quoted = !quoted,
                ':' if !quoted => return unfolded[i + 1..].to_owned(),
                _ => {}
            }
        }
        String::new()
    }

    /// Whether this is a content line at all (`[group.]NAME...:` before any value, the
    /// name of letters, digits, `-` and `_`, no bare CR): calcard reads other lines its
    /// own way (it ends a name at `=`, a line at a CR), so a line written anew could
    /// land outside what it reads.
    pub fn is_content(&self) -> bool {
        let unfolded = self.unfolded();
        if unfolded.contains('\r') {
            return false;
        }
        let mut quoted = false;
        for c in unfolded.chars() {
            match c {
                '"' => quoted = !quoted,
                ':' if !quoted => {
                    let head = head_of(&unfolded);
                    return !head.is_empty()
                        && head
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                }
                _ => {}
            }
        }
        false
    }
}

/// `[group.]NAME` of an unfolded line: up to the first `;` or `:`.
fn head_of(unfolded: &str) -> &str {
    let end = unfolded.find([';', ':']).unwrap_or(unfolded.len());
    unfolded[..end].trim()
}

fn is_quoted_printable(unfolded: &str) -> bool {
    let upper = unfolded.to_ascii_uppercase();
    let params = &upper[..upper.find(':').unwrap_or(upper.len())];
    params.contains("QUOTED-PRINTABLE")
        || params.contains("ENCODING=Q;")
        || params.ends_with("ENCODING=Q")
}

/// Cuts `text` into content lines (blank lines are dropped, except those between a line
/// and a folded continuation: they stay in that line, as a reader ends the line at them
/// and would join the continuation if they went). The bytes of all the lines together
/// are the text without its blank lines.
pub fn split(text: &str) -> Vec<Line> {
    let mut lines: Vec<Line> = Vec::new();
    let mut blank = String::new();
    for (index, physical) in text.split_inclusive('\n').enumerate() {
        let number = index + 1;
        // Only a line ending in `=` can be quoted-printable text that goes on: the
        // unfolding (an allocation) waits for that.
        let continues = physical.starts_with([' ', '\t'])
            || lines.last().is_some_and(|l| {
                l.raw.trim_end_matches(['\r', '\n']).ends_with('=') && {
                    let unfolded = l.unfolded();
                    unfolded.ends_with('=') && is_quoted_printable(&unfolded)
                }
            });
        match lines.last_mut() {
            Some(last) if physical.starts_with([' ', '\t']) && !blank.is_empty() => {
                last.raw.push_str(&std::mem::take(&mut blank));
                last.raw.push_str(physical);
            }
            Some(last) if continues && !physical.trim().is_empty() => last.raw.push_str(physical),
            _ if physical.trim().is_empty() => {
                if !physical.starts_with([' ', '\t']) {
                    blank.push_str(physical);
                }
            }
            _ => {
                blank.clear();
                lines.push(Line {
                    raw: physical.to_owned(),
                    number,
                });
            }
        }
    }
    // The last line may lack its line ending; later edits append after it.
    if let Some(last) = lines.last_mut()
        && !last.raw.ends_with('\n')
    {
        last.raw.push_str("\r\n");
    }
    lines
}

/// One object (`BEGIN:KIND` ... `END:KIND`) found in a text of many.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    pub lines: Vec<Line>,
    /// 1-based position among the file's objects.
    pub index: usize,
}

impl Object {
    pub fn text(&self) -> String {
        self.lines.iter().map(|l| l.raw.as_str()).collect()
    }

    pub fn first_line(&self) -> usize {
        self.lines.first().map_or(0, |l| l.number)
    }
}

/// Why a text is not a sequence of objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SplitError {
    #[error("line {line}: {found:?} is outside any BEGIN:{kind} ... END:{kind}")]
    Outside {
        line: usize,
        kind: String,
        found: String,
    },
    #[error("entry {index} (line {line}) has no END:{kind}")]
    Unterminated {
        index: usize,
        line: usize,
        kind: String,
    },
    #[error("entry {index}, line {line}: {found:?} is not a content line (NAME:value)")]
    NotContent {
        index: usize,
        line: usize,
        found: String,
    },
    #[error("entry {index}, line {line}: {found:?} does not close BEGIN:{open}")]
    Unbalanced {
        index: usize,
        line: usize,
        found: String,
        open: String,
    },
    #[error("entry {index}, line {line}: a {kind} holds no BEGIN")]
    Nested {
        index: usize,
        line: usize,
        kind: String,
    },
    #[error("the text holds no BEGIN:{0}")]
    Empty(String),
}

/// Cuts a text of many objects of `kind` (`VCARD`, `VCALENDAR`) into one per object,
/// each with its lines as they were. Nested components (`BEGIN:VEVENT` inside a
/// calendar) stay inside their object.
pub fn objects(text: &str, kind: &str) -> Result<Vec<Object>, SplitError> {
    let mut out = Vec::new();
    let mut current: Option<Object> = None;
    // The components open, innermost last: each END closes the one it names.
    let mut open: Vec<String> = Vec::new();
    for line in split(text.strip_prefix('\u{feff}').unwrap_or(text)) {
        let name = line.name();
        let value = line.value().trim().to_ascii_uppercase();
        match current.as_mut() {
            None => {
                if name == "BEGIN" && value == kind {
                    open = vec![value];
                    current = Some(Object {
                        lines: vec![line],
                        index: out.len() + 1,
                    });
                } else {
                    return Err(SplitError::Outside {
                        line: line.number,
                        kind: kind.to_owned(),
                        found: preview(&line.unfolded()),
                    });
                }
            }
            Some(object) => {
                if !line.is_content() {
                    return Err(SplitError::NotContent {
                        index: object.index,
                        line: line.number,
                        found: preview(&line.unfolded()),
                    });
                }
                if name == "BEGIN" && kind == "VCARD" {
                    // A card holds no components: calcard ends it at the first END.
                    return Err(SplitError::Nested {
                        index: object.index,
                        line: line.number,
                        kind: kind.to_owned(),
                    });
                } else if name == "BEGIN" {
                    open.push(value);
                } else if name == "END" {
                    // calcard and these lines must agree on where a component ends, or
                    // a line written anew lands in another component than was read.
                    if open.last() != Some(&value) {
                        return Err(SplitError::Unbalanced {
                            index: object.index,
                            line: line.number,
                            found: preview(&line.unfolded()),
                            open: open.last().cloned().unwrap_or_default(),
                        });
                    }
                    open.pop();
                }
                object.lines.push(line);
                if open.is_empty() {
                    out.push(current.take().expect("an object is open"));
                }
            }
        }
    }
    if let Some(object) = current {
        return Err(SplitError::Unterminated {
            index: object.index,
            line: object.first_line(),
            kind: kind.to_owned(),
        });
    }
    if out.is_empty() {
        return Err(SplitError::Empty(kind.to_owned()));
    }
    Ok(out)
}

fn preview(text: &str) -> String {
    let mut shown: String = text.chars().take(60).collect();
    if shown.len() < text.len() {
        shown.push('…');
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_unfold_and_keep_their_bytes() {
        let text = "BEGIN:VCARD\r\nVERSION:3.0\r\nitem1.EMAIL;type=INTERNET:ada@exa\r\n mple.org\r\nNOTE;ENCODING=QUOTED-PRINTABLE:one=\r\ntwo\r\n\r\nEND:VCARD";
        let lines = split(text);
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[2].unfolded(),
            "item1.EMAIL;type=INTERNET:ada@example.org"
        );
        assert_eq!(lines[2].name(), "EMAIL");
        assert_eq!(lines[2].group().as_deref(), Some("item1"));
        assert_eq!(lines[3].unfolded(), "NOTE;ENCODING=QUOTED-PRINTABLE:onetwo");
        assert_eq!(lines[4].number, 8);
        assert_eq!(lines[4].raw, "END:VCARD\r\n");
        let joined: String = lines.iter().map(|l| l.raw.as_str()).collect();
        assert_eq!(joined, text.replace("\r\n\r\n", "\r\n").to_owned() + "\r\n");
    }

    /// Found by the `vcard` fuzz target: a blank line before a continuation ends the
    /// line for a reader, so it stays; dropped, the text written back said
    /// `United Kingdom` where the text and the fields said `Unite`.
    #[test]
    fn a_blank_line_before_a_continuation_stays() {
        let text = "ADR:;;;London;;;Unite\n\n d Kingdom\r\nNOTE:a\r\n\r\nUID:1\r\n";
        let lines = split(text);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].raw, "ADR:;;;London;;;Unite\n\n d Kingdom\r\n");
        assert_eq!(lines[0].name(), "ADR");
        assert_eq!(lines[1].raw, "NOTE:a\r\n");
        assert_eq!(lines[2].raw, "UID:1\r\n");
        // Whitespace-only continuations and blank lines before a new line go, as before.
        let lines = split("NOTE:a\r\n \r\n\r\nUID:1\r\n");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].raw, "NOTE:a\r\n");
    }

    /// `is` says what `name` says, whether the name is plain, grouped, lower case,
    /// followed by parameters, or cut by a fold.
    #[test]
    fn a_line_is_its_name_however_it_is_written() {
        let text =
            "UID:1\r\nitem2.uid;VALUE=text:2\r\nU\r\n ID:3\r\nUIDX:4\r\nX-UID:5\r\nNOTE:UID:6\r\n";
        let lines = split(text);
        assert_eq!(lines.len(), 6);
        for line in &lines {
            assert_eq!(line.is("UID"), line.name() == "UID", "{:?}", line.raw);
        }
        let named: Vec<bool> = lines.iter().map(|l| l.is("UID")).collect();
        assert_eq!(named, [true, true, true, false, false, false]);
    }

    #[test]
    fn objects_are_cut_and_bad_texts_named() {
        let two = "BEGIN:VCARD\nFN:A\nEND:VCARD\nBEGIN:VCARD\nFN:B\nEND:VCARD\n";
        let objects = objects(two, "VCARD").unwrap();
        assert_eq!(objects.len(), 2);
        assert_eq!(objects[1].first_line(), 4);
        assert_eq!(objects[1].text(), "BEGIN:VCARD\nFN:B\nEND:VCARD\n");
        assert!(matches!(
            super::objects("BEGIN:VCARD\nFN:A\n", "VCARD"),
            Err(SplitError::Unterminated {
                index: 1,
                line: 1,
                ..
            })
        ));
        assert!(matches!(
            super::objects("hello\nBEGIN:VCARD\nEND:VCARD\n", "VCARD"),
            Err(SplitError::Outside { line: 1, .. })
        ));
        assert!(matches!(
            super::objects("BEGIN:VCARD\nFN:A\nnonsense\nEND:VCARD\n", "VCARD"),
            Err(SplitError::NotContent {
                index: 1,
                line: 3,
                ..
            })
        ));
        assert!(matches!(
            super::objects("", "VCARD"),
            Err(SplitError::Empty(_))
        ));
        // Found by the `icalendar` fuzz target: an END that names another component
        // (calcard nests differently, and the UID given went into another event).
        assert!(matches!(
            super::objects(
                "BEGIN:VCALENDAR\nBEGIN:VEVENT\nBEGIN:VALARM\nEND:VEVENT\nEND:VALARM\nEND:VCALENDAR\n",
                "VCALENDAR"
            ),
            Err(SplitError::Unbalanced {
                index: 1,
                line: 4,
                ..
            })
        ));
        // Found by the `vcard` fuzz target: `END=b;...` ends the card for calcard, and
        // a bare CR ends a line; neither is a content line here.
        for text in [
            "BEGIN:VCARD\nFN:A\nEND=b;X=Y:z\nEND:VCARD\n",
            "BEGIN:VCARD\nFN:A\rEND:VCARD\nEND:VCARD\n",
        ] {
            assert!(
                matches!(
                    super::objects(text, "VCARD"),
                    Err(SplitError::NotContent { .. })
                ),
                "{text:?}"
            );
        }
        // Found by the `vcard` fuzz target: a card inside a card (calcard ends the
        // outer one at the inner END, and a UID given went after it).
        assert!(matches!(
            super::objects(
                "BEGIN:VCARD\nFN:A\nBEGIN:VCARD\nFN:B\nEND:VCARD\nEND:VCARD\n",
                "VCARD"
            ),
            Err(SplitError::Nested {
                index: 1,
                line: 3,
                ..
            })
        ));
        let nested = "BEGIN:VCALENDAR\nBEGIN:VEVENT\nUID:1\nEND:VEVENT\nEND:VCALENDAR\n";
        assert_eq!(
            super::objects(nested, "VCALENDAR").unwrap()[0].lines.len(),
            5
        );
    }
}
