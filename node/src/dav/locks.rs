//! WebDAV locks (RFC 4918 §6, §7, §9.10, §9.11, §10.4): what makes the file share
//! class 2, so that macOS Finder and Windows mount it writable and two editors of one
//! document do not overwrite each other through one node.
//!
//! Locks are advisory state of this node, kept in memory: they coordinate the clients
//! of one node (the vault's devices cannot hold a lock together while apart, so a lock
//! is not synced), and a restart drops them (RFC 4918 allows it; clients lock again).
//! Memory is bounded: a lock lives at most [`MAX_TIMEOUT`] unless refreshed, a grant
//! holds at most [`MAX_PER_HOLDER`], the node [`MAX_LOCKS`]. A lock belongs to the
//! grant that took it: another grant naming its token does not get past it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::files::FilePath;

/// The longest a lock lives without a refresh (and what `Infinite` gets).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Locks one grant may hold at once.
pub const MAX_PER_HOLDER: usize = 1000;
/// Locks the node holds at once.
pub const MAX_LOCKS: usize = 10_000;
/// The longest `DAV:owner` kept (its inner XML).
pub const MAX_OWNER_BYTES: usize = 4096;
/// Lists an `If` header may hold, and conditions in one list: each ETag condition
/// about another resource is a read of it, so an `If` header is not a way to make the
/// node read (and audit) hundreds of files in one request. Clients send one or two.
pub const MAX_IF_LISTS: usize = 16;
pub const MAX_IF_CONDITIONS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    /// `urn:uuid:…`
    pub token: String,
    /// The vault path the lock was taken on.
    pub root: FilePath,
    /// Depth infinity: everything under `root` too.
    pub infinite: bool,
    pub shared: bool,
    /// The client's `DAV:owner`, as inner XML.
    pub owner: String,
    /// The grant that holds it.
    pub holder: String,
    pub timeout: Duration,
    pub expires: Instant,
}

impl Lock {
    /// Whether the lock applies to `path`.
    pub fn covers(&self, path: &FilePath) -> bool {
        *path == self.root || (self.infinite && path.within(&self.root))
    }

    pub fn seconds_left(&self) -> u64 {
        self.expires
            .saturating_duration_since(Instant::now())
            .as_secs()
    }
}

/// Why a lock cannot be taken.
#[derive(Debug, PartialEq, Eq)]
pub enum LockRefused {
    /// Another lock is in the way.
    Conflict(Box<Lock>),
    /// Too many locks (the grant's or the node's).
    TooMany(String),
}

/// The node's locks.
#[derive(Default)]
pub struct Locks(Mutex<Vec<Lock>>);

/// How a request changes the tree at a path, for [`Locks::missing_token`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The resource itself (PUT of an existing file, PROPPATCH).
    Resource,
    /// A member made or removed: its folder's depth-0 locks count too (PUT of a new
    /// file, MKCOL, LOCK of an unmapped path).
    Member,
    /// A member removed with all it holds: locks under it count too (DELETE, the
    /// source of MOVE, an overwritten destination).
    Tree,
}

impl Locks {
    fn live(&self) -> std::sync::MutexGuard<'_, Vec<Lock>> {
        let mut locks = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        locks.retain(|l| l.expires > now);
        locks
    }

    /// The locks that apply to `path`.
    pub fn covering(&self, path: &FilePath) -> Vec<Lock> {
        self.live()
            .iter()
            .filter(|l| l.covers(path))
            .cloned()
            .collect()
    }

    /// Takes a lock, unless one in the way exists: an exclusive one wants no other
    /// lock on what it covers; a shared one wants no exclusive one.
    pub fn take(
        &self,
        root: &FilePath,
        infinite: bool,
        shared: bool,
        owner: String,
        holder: &str,
        timeout: Duration,
    ) -> Result<Lock, LockRefused> {
        let mut locks = self.live();
        if let Some(other) = locks.iter().find(|l| {
            let overlaps = l.covers(root) || (infinite && l.root.within(root));
            overlaps && !(shared && l.shared)
        }) {
            return Err(LockRefused::Conflict(Box::new(other.clone())));
        }
        if locks.len() >= MAX_LOCKS {
            return Err(LockRefused::TooMany(format!(
                "this node holds {MAX_LOCKS} locks already"
            )));
        }
        if locks.iter().filter(|l| l.holder == holder).count() >= MAX_PER_HOLDER {
            return Err(LockRefused::TooMany(format!(
                "this grant holds {MAX_PER_HOLDER} locks already: unlock some first"
            )));
        }
        let timeout = timeout.min(MAX_TIMEOUT);
        let lock = Lock {
            token: new_token(),
            root: root.clone(),
            infinite,
            shared,
            owner,
            holder: holder.to_owned(),
            timeout,
            expires: Instant::now() + timeout,
        };
        locks.push(lock.clone());
        Ok(lock)
    }

    /// Refreshes the lock of `holder` that applies to `path` and whose token is one
    /// of `tokens`; `None` if there is none.
    pub fn refresh(
        &self,
        path: &FilePath,
        tokens: &[String],
        holder: &str,
        timeout: Duration,
    ) -> Option<Lock> {
        let mut locks = self.live();
        let lock = locks
            .iter_mut()
            .find(|l| l.holder == holder && l.covers(path) && tokens.contains(&l.token))?;
        lock.timeout = timeout.min(MAX_TIMEOUT);
        lock.expires = Instant::now() + lock.timeout;
        Some(lock.clone())
    }

    /// Removes the lock `token` if it applies to `path`. `Err(true)`: it is another
    /// grant's; `Err(false)`: no such lock applies to `path`.
    pub fn release(&self, path: &FilePath, token: &str, holder: &str) -> Result<(), bool> {
        let mut locks = self.live();
        let at = locks
            .iter()
            .position(|l| l.token == token && l.covers(path))
            .ok_or(false)?;
        if locks[at].holder != holder {
            return Err(true);
        }
        locks.remove(at);
        Ok(())
    }

    /// A lock that keeps `holder` from making `change` at `path` with the tokens it
    /// `submitted`, if any.
    pub fn missing_token(
        &self,
        path: &FilePath,
        change: Change,
        submitted: &[String],
        holder: &str,
    ) -> Option<Lock> {
        let parent = path.parent();
        self.live()
            .iter()
            .filter(|l| {
                l.covers(path)
                    || (change != Change::Resource && parent.as_ref().is_some_and(|p| l.root == *p))
                    || (change == Change::Tree && l.root.within(path))
            })
            .find(|l| !(l.holder == holder && submitted.contains(&l.token)))
            .cloned()
    }

    /// Drops every lock `holder` holds (its grant ended).
    pub fn drop_holder(&self, holder: &str) {
        self.live().retain(|l| l.holder != holder);
    }

    /// Whether a folder's depth-0 lock names `path`'s folder (a PUT must then know
    /// whether it makes a new file).
    pub fn on_folder_of(&self, path: &FilePath) -> bool {
        let Some(parent) = path.parent() else {
            return false;
        };
        self.live().iter().any(|l| l.root == parent && !l.infinite)
    }

    /// Drops the locks on `path` and under it (it was removed or moved away).
    pub fn forget(&self, path: &FilePath) {
        self.live().retain(|l| !l.root.within(path));
    }
}

fn new_token() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "urn:uuid:{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The `Timeout` a client asks for (RFC 4918 §10.7): the first it names that this
/// node reads, capped at [`MAX_TIMEOUT`]; [`MAX_TIMEOUT`] if none.
pub fn timeout_of(header: Option<&str>) -> Duration {
    header
        .into_iter()
        .flat_map(|h| h.split(','))
        .find_map(|t| {
            let t = t.trim();
            if t.eq_ignore_ascii_case("infinite") {
                return Some(MAX_TIMEOUT);
            }
            let seconds = t.strip_prefix("Second-")?.parse::<u64>().ok()?;
            Some(Duration::from_secs(seconds.max(1)))
        })
        .unwrap_or(MAX_TIMEOUT)
        .min(MAX_TIMEOUT)
}

/// One condition of an `If` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// A state token (a lock token, or `DAV:no-lock`, which no resource has).
    Token(String),
    /// An entity tag, quotes and all.
    Etag(String),
}

/// One list of an `If` header: the resource it is about (`None`: the request's),
/// and its conditions, each perhaps negated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    pub resource: Option<String>,
    pub conditions: Vec<(bool, Condition)>,
}

/// Reads an `If` header (RFC 4918 §10.4): tagged or untagged lists.
pub fn parse_if(header: &str) -> Result<Vec<List>, String> {
    let mut lists = Vec::new();
    let mut resource: Option<String> = None;
    let mut rest = header.trim_start();
    let bad = |what: &str| format!("the If header is malformed: {what}");
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('<') {
            let end = after.find('>').ok_or_else(|| bad("a '<' is not closed"))?;
            resource = Some(after[..end].to_owned());
            rest = after[end + 1..].trim_start();
            if !rest.starts_with('(') {
                return Err(bad("a resource tag is not followed by a list"));
            }
            continue;
        }
        let Some(after) = rest.strip_prefix('(') else {
            return Err(bad("expected '(' or '<'"));
        };
        let mut inner = after.trim_start();
        let mut conditions = Vec::new();
        loop {
            if let Some(after) = inner.strip_prefix(')') {
                inner = after;
                break;
            }
            let mut not = false;
            if inner.len() >= 3 && inner[..3].eq_ignore_ascii_case("not") {
                not = true;
                inner = inner[3..].trim_start();
            }
            if let Some(after) = inner.strip_prefix('<') {
                let end = after.find('>').ok_or_else(|| bad("a '<' is not closed"))?;
                conditions.push((not, Condition::Token(after[..end].to_owned())));
                inner = after[end + 1..].trim_start();
            } else if let Some(after) = inner.strip_prefix('[') {
                let end = after.find(']').ok_or_else(|| bad("a '[' is not closed"))?;
                conditions.push((not, Condition::Etag(after[..end].trim().to_owned())));
                inner = after[end + 1..].trim_start();
            } else {
                return Err(bad("a list holds something other than <token> or [etag]"));
            }
            if conditions.len() > MAX_IF_CONDITIONS {
                return Err(bad("too many conditions in one list"));
            }
        }
        if conditions.is_empty() {
            return Err(bad("an empty list"));
        }
        lists.push(List {
            resource: resource.clone(),
            conditions,
        });
        if lists.len() > MAX_IF_LISTS {
            return Err(bad("too many lists"));
        }
        rest = inner.trim_start();
    }
    if lists.is_empty() {
        return Err(bad("no list"));
    }
    Ok(lists)
}

/// The lock tokens an `If` header submits (RFC 4918 §6.5: named in it at all).
pub fn submitted(lists: &[List]) -> Vec<String> {
    lists
        .iter()
        .flat_map(|l| &l.conditions)
        .filter_map(|(_, c)| match c {
            Condition::Token(t) => Some(t.clone()),
            Condition::Etag(_) => None,
        })
        .collect()
}

/// The `DAV:activelock` of a lock, its root shown as `root_href`.
pub fn activelock(lock: &Lock, root_href: &str) -> String {
    use quick_xml::escape::escape;
    format!(
        "<d:activelock><d:locktype><d:write/></d:locktype><d:lockscope><d:{}/></d:lockscope><d:depth>{}</d:depth>{}<d:timeout>Second-{}</d:timeout><d:locktoken><d:href>{}</d:href></d:locktoken><d:lockroot><d:href>{}</d:href></d:lockroot></d:activelock>",
        if lock.shared { "shared" } else { "exclusive" },
        if lock.infinite { "infinity" } else { "0" },
        if lock.owner.is_empty() {
            String::new()
        } else {
            format!("<d:owner>{}</d:owner>", lock.owner)
        },
        lock.seconds_left().max(1),
        escape(lock.token.as_str()),
        escape(root_href),
    )
}

/// `DAV:supportedlock`: exclusive and shared write locks.
pub const SUPPORTED: &str = "<d:lockentry><d:lockscope><d:exclusive/></d:lockscope><d:locktype><d:write/></d:locktype></d:lockentry><d:lockentry><d:lockscope><d:shared/></d:lockscope><d:locktype><d:write/></d:locktype></d:lockentry>";

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FilePath {
        FilePath::parse(s).unwrap()
    }

    #[test]
    fn if_headers_read_as_rfc_4918_writes_them() {
        let lists = parse_if(
            "</files/a> (<urn:uuid:1> [\"e1\"]) (Not <DAV:no-lock> [W/\"e2\"]) <http://h/b>(<urn:uuid:2>)",
        )
        .unwrap();
        assert_eq!(lists.len(), 3);
        assert_eq!(lists[0].resource.as_deref(), Some("/files/a"));
        assert_eq!(
            lists[0].conditions,
            vec![
                (false, Condition::Token("urn:uuid:1".into())),
                (false, Condition::Etag("\"e1\"".into()))
            ]
        );
        assert_eq!(lists[1].resource.as_deref(), Some("/files/a"));
        assert_eq!(
            lists[1].conditions[0],
            (true, Condition::Token("DAV:no-lock".into()))
        );
        assert_eq!(lists[2].resource.as_deref(), Some("http://h/b"));
        assert_eq!(
            submitted(&lists),
            vec!["urn:uuid:1", "DAV:no-lock", "urn:uuid:2"]
        );
        for bad in ["", "(", "()", "(<a>", "<a>", "(x)", "([\"e\"", "(<a>) junk"] {
            assert!(parse_if(bad).is_err(), "{bad:?} was read");
        }
        // Bounded: no header makes the node look at more than a few resources.
        let many_lists: String = (0..=MAX_IF_LISTS)
            .map(|i| format!("</files/f{i}> ([\"e\"])"))
            .collect();
        assert!(parse_if(&many_lists).is_err());
        let long_list = format!("({})", "[\"e\"] ".repeat(MAX_IF_CONDITIONS + 1));
        assert!(parse_if(&long_list).is_err());
        let most: String = (0..MAX_IF_LISTS)
            .map(|i| format!("</f{i}> (<t>)"))
            .collect();
        assert_eq!(parse_if(&most).unwrap().len(), MAX_IF_LISTS);
    }

    #[test]
    fn exclusive_and_shared_locks_meet_as_rfc_4918_says() {
        let locks = Locks::default();
        let t = Duration::from_secs(60);
        let a = locks
            .take(&p("/d"), true, false, String::new(), "g", t)
            .unwrap();
        // Under a depth-infinity exclusive lock, nothing else.
        assert_eq!(
            locks.take(&p("/d/x"), false, true, String::new(), "g", t),
            Err(LockRefused::Conflict(Box::new(a.clone())))
        );
        // An infinity lock above an existing one conflicts too.
        assert!(matches!(
            locks.take(&p("/"), true, true, String::new(), "g", t),
            Err(LockRefused::Conflict(_))
        ));
        assert!(
            locks
                .take(&p("/dx"), false, false, String::new(), "g", t)
                .is_ok()
        );
        // A member needs the token, and only the holder's submission counts.
        let tokens = vec![a.token.clone()];
        let root = |l: Option<Lock>| l.map(|l| l.root);
        assert_eq!(
            root(locks.missing_token(&p("/d/x"), Change::Member, &[], "g")),
            Some(p("/d"))
        );
        assert_eq!(
            locks.missing_token(&p("/d/x"), Change::Member, &tokens, "g"),
            None
        );
        assert_eq!(
            root(locks.missing_token(&p("/d/x"), Change::Member, &tokens, "other")),
            Some(p("/d"))
        );
        // Removing the folder above needs it too.
        assert_eq!(
            locks
                .missing_token(&p("/"), Change::Tree, &[], "g")
                .map(|l| l.root.to_string()),
            Some("/d".into())
        );
        assert_eq!(locks.release(&p("/d/x"), &a.token, "other"), Err(true));
        assert_eq!(locks.release(&p("/d/x"), &a.token, "g"), Ok(()));
        assert_eq!(locks.release(&p("/d"), &a.token, "g"), Err(false));
        // Shared locks share.
        let s1 = locks
            .take(&p("/s"), false, true, String::new(), "g", t)
            .unwrap();
        let s2 = locks
            .take(&p("/s"), false, true, String::new(), "h", t)
            .unwrap();
        assert_ne!(s1.token, s2.token);
        assert!(
            locks
                .take(&p("/s"), false, false, String::new(), "g", t)
                .is_err()
        );
        // A depth-0 lock on a folder guards its members, not their contents.
        locks
            .take(&p("/f"), false, false, String::new(), "g", t)
            .unwrap();
        assert!(locks.on_folder_of(&p("/f/x")));
        assert_eq!(
            locks.missing_token(&p("/f/x"), Change::Resource, &[], "g"),
            None
        );
        assert_eq!(
            root(locks.missing_token(&p("/f/x"), Change::Member, &[], "g")),
            Some(p("/f"))
        );
        // A grant's locks go with it.
        locks.drop_holder("g");
        assert_eq!(
            locks.missing_token(&p("/f/x"), Change::Member, &[], "h"),
            None
        );
        let f = locks
            .take(&p("/f"), false, false, String::new(), "g", t)
            .unwrap();
        locks.forget(&p("/f"));
        assert!(locks.covering(&p("/f")).is_empty());
        assert!(locks.refresh(&p("/f"), &[f.token], "g", t).is_none());
    }

    #[test]
    fn locks_expire_and_timeouts_are_capped() {
        assert_eq!(timeout_of(Some("Second-60")), Duration::from_secs(60));
        assert_eq!(timeout_of(Some("Infinite, Second-4100000000")), MAX_TIMEOUT);
        assert_eq!(timeout_of(Some("Second-999999999")), MAX_TIMEOUT);
        assert_eq!(timeout_of(Some("Minute-3")), MAX_TIMEOUT);
        assert_eq!(timeout_of(None), MAX_TIMEOUT);
        let locks = Locks::default();
        locks
            .take(&p("/a"), false, false, String::new(), "g", Duration::ZERO)
            .unwrap();
        assert!(locks.covering(&p("/a")).is_empty());
    }

    #[test]
    fn a_grant_cannot_hold_more_than_its_share_of_locks() {
        let locks = Locks::default();
        let t = Duration::from_secs(60);
        for i in 0..MAX_PER_HOLDER {
            locks
                .take(&p(&format!("/{i}")), false, false, String::new(), "g", t)
                .unwrap();
        }
        assert!(matches!(
            locks.take(&p("/more"), false, false, String::new(), "g", t),
            Err(LockRefused::TooMany(_))
        ));
        assert!(
            locks
                .take(&p("/more"), false, false, String::new(), "h", t)
                .is_ok()
        );
    }
}
