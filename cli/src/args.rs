//! Command-line arguments (clap). `--home` and `--json` are global: they work before
//! or after the command's name.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "hearth",
    version,
    about = "Hearth: a personal data vault on your own devices",
    long_about = "Hearth keeps your data (contacts, calendar, notes, files...) encrypted on your own \
                  devices. `hearth up` runs the node; the other commands talk to the running node \
                  through its local API (the address is in HOME/api.addr, the owner token in \
                  HOME/owner.token).",
    after_help = "Quick start:\n  hearth up                               run the node (creates the vault on first run)\n  hearth put contacts '{\"name\":\"Ada\"}'    store a record\n  hearth ls contacts                      read them back"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The vault's home directory [default: $HEARTH_HOME, else the platform data dir]
    #[arg(long, global = true, env = "HEARTH_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print one JSON value on stdout instead of text for people
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PassphraseArgs {
    /// Read the vault passphrase from this file (else $HEARTH_PASSPHRASE; else none)
    #[arg(long, value_name = "F")]
    pub passphrase_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a vault in HOME (refuses if HOME already has one)
    Init {
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Run the node in the foreground; creates the vault first if HOME has none
    Up {
        /// Address of the local HTTP API (port 0 picks a free port) [default: 127.0.0.1:7780].
        /// Every flag of `up` can also be set in HOME/hearth.toml; a flag overrides it
        #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_api_addr, overrides_with = "api")]
        api: Option<SocketAddr>,
        /// Allow the API on a non-loopback address (anyone who reaches it can try tokens)
        #[arg(long)]
        api_public: bool,
        /// Also serve the API and CardDAV/CalDAV on the LAN, over TLS only, for phones
        /// and other computers (`hearth status` shows the certificate's fingerprint)
        #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = hearth_node::DEFAULT_LAN_ADDR)]
        lan: Option<SocketAddr>,
        /// On the LAN, serve only what apps use (CardDAV/CalDAV, the dashboard and the
        /// service views), not the owner's routes, which then answer on loopback only
        #[arg(long)]
        lan_apps_only: bool,
        /// Where to listen for the vault's other devices (repeatable)
        /// [default: /ip4/0.0.0.0/tcp/0 and /ip4/0.0.0.0/udp/0/quic-v1]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<hearth_node::Multiaddr>,
        /// A device to dial, e.g. a home server: /ip4/203.0.113.5/tcp/4001/p2p/12D3... (repeatable)
        #[arg(long, value_name = "MULTIADDR")]
        peer: Vec<hearth_node::Multiaddr>,
        /// Do not use mDNS to find the vault's devices on the LAN
        #[arg(long)]
        no_mdns: bool,
        /// Relay connections between this vault's devices (for a home server with a
        /// public address); other peers are disconnected when they try
        #[arg(long)]
        relay: bool,
        /// Run without the mesh: no other device can reach or join this one
        #[arg(long)]
        no_mesh: bool,
        /// Log more: -v for Hearth's details, -vv for everything (RUST_LOG overrides)
        #[arg(short, long, action = clap::ArgAction::Count, conflicts_with = "quiet")]
        verbose: u8,
        /// Log only problems
        #[arg(short, long)]
        quiet: bool,
        /// Start even though the store went back in time (you restored an older copy
        /// of it on purpose): what it lost comes back from the vault's other devices
        #[arg(long)]
        accept_rollback: bool,
        /// Keep at most this many MiB of collections in memory, counted by their size
        /// on disk (the least recently used are dropped and read again when needed)
        /// [default: 64]
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(1..))]
        cache_mb: Option<u32>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// This device, its vault, the API address and the collections
    Status {
        /// Keep watching (on a terminal): devices, syncs and blobs still arriving, with
        /// a progress bar, until Ctrl-C; with --until-synced, until this device has
        /// caught up (synced with a device and nothing left to arrive)
        #[arg(long)]
        watch: bool,
        /// With --watch: stop once caught up (also without a terminal: then it only
        /// waits, and exits 0)
        #[arg(long, requires = "watch")]
        until_synced: bool,
    },
    /// Create or replace a record: `put COLLECTION [ID] JSON|@FILE|-`
    Put {
        collection: String,
        /// `[ID] DATA`: the record id (optional; else the body's "id" or a new one) and the
        /// record as JSON, @FILE for a file, or - for stdin
        #[arg(num_args = 1..=2, required = true, value_name = "[ID] JSON|@FILE|-")]
        rest: Vec<String>,
    },
    /// Print a record (and say which of its fields were edited on two devices at once)
    Get { collection: String, id: String },
    /// List records in conflict: fields edited differently on two devices while they
    /// were apart, whole versions (the same id made on two devices), records deleted
    /// on one device while edited on another (kept)
    Conflicts {
        /// Only this collection (default: every collection)
        collection: Option<String>,
    },
    /// End a conflict: choose a field's value (FIELD VALUE), keep one whole version
    /// (--version N), or write a merge (--record); it holds on every device
    Resolve {
        collection: String,
        id: String,
        /// The field whose value to choose
        #[arg(requires = "value", conflicts_with_all = ["version", "record"])]
        field: Option<String>,
        /// The value: JSON (`"text"`, 3, true, {...}), or else taken as text
        value: Option<String>,
        /// Keep version N as `hearth conflicts` numbers them (1: the one shown; also
        /// keeps a record that was deleted while edited)
        #[arg(long, value_name = "N", conflicts_with = "record")]
        version: Option<usize>,
        /// Write this record (JSON, @FILE or - for stdin) as the only version
        #[arg(long, value_name = "JSON|@FILE|-")]
        record: Option<String>,
    },
    /// Merge fields into a record (JSON Merge Patch: null removes a field)
    Patch {
        collection: String,
        id: String,
        /// The fields as JSON, @FILE for a file, or - for stdin
        #[arg(value_name = "JSON|@FILE|-")]
        data: String,
    },
    /// List the records of a collection
    Ls { collection: String },
    /// Remove a record; or, without ID, an empty collection (from every device's list)
    Rm {
        collection: String,
        id: Option<String>,
    },
    /// List collections with their record counts
    Collections,
    /// Print a one-time invite code for a new device (valid 10 minutes, works once)
    Pair,
    /// Make HOME (with no vault yet) a new device of the inviter's vault; then `hearth up`
    Join {
        /// The code `hearth pair` printed on a device of the vault; @FILE reads it from
        /// a file, - from stdin (so it stays out of the shell's history)
        #[arg(value_name = "CODE|@FILE|-")]
        code: String,
        /// A name for this device in the device list [default: the host name]
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Bring a vault back from a backup host into this empty HOME with its recovery kit
    /// alone: every record, blob, grant and the audit log. This HOME becomes a new
    /// device of the vault (the old devices stay listed until you remove them)
    Recover {
        /// The kit: its file, or - to read its 24 words or two shares from stdin
        #[arg(long, value_name = "FILE|-")]
        kit: PathBuf,
        /// The backup host: its address (with /p2p/PEER_ID, as `hearth host vaults`
        /// prints it) or a code it printed. Without it, the hosts the kit file names
        /// are tried in turn
        #[arg(long, value_name = "MULTIADDR|CODE")]
        host: Option<String>,
        /// The kit file's passphrase, if it was made with one
        #[arg(long, value_name = "F")]
        kit_passphrase_file: Option<PathBuf>,
        #[command(flatten)]
        passphrase: PassphraseArgs,
    },
    /// Set, change or remove the passphrase that wraps this device's key file (the old
    /// one from --passphrase-file or $HEARTH_PASSPHRASE; an interruption leaves the old
    /// one working)
    Passphrase {
        #[command(flatten)]
        passphrase: PassphraseArgs,
        /// Read the new passphrase from this file (else $HEARTH_NEW_PASSPHRASE)
        #[arg(long, value_name = "F", conflicts_with = "remove")]
        new_passphrase_file: Option<PathBuf>,
        /// Remove the passphrase: the key file is then protected only by its permissions
        #[arg(long)]
        remove: bool,
    },
    /// List the vault's devices, or remove one
    Devices {
        #[command(subcommand)]
        command: Option<DevicesCommand>,
    },
    /// Make a recovery kit: a secret, shown as 24 words (or split into shares, or
    /// written to a file), that opens every key of the vault; keep it away from your
    /// devices. A new kit replaces the old one for everything made afterwards
    RecoveryKit {
        /// Also write the kit to FILE (JSON, mode 0600), and its QR code to FILE.svg
        #[arg(short = 'o', long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists
        #[arg(long, requires = "output")]
        force: bool,
        /// Split the secret into shares, any K of which bring it back (e.g. 2-of-3),
        /// instead of showing its words
        #[arg(long, value_name = "K-of-N", conflicts_with_all = ["output", "passphrase_file"])]
        shares: Option<String>,
        /// Seal the secret in FILE under this passphrase (read from F) instead of
        /// showing its words (with --check: the passphrase of the kit file checked)
        #[arg(long, value_name = "F")]
        passphrase_file: Option<PathBuf>,
        /// Check a kit you keep instead of making one: its file, or (without FILE, or
        /// with -) its 24 words or two shares on stdin. Says whether it is the vault's
        /// kit and opens every key; fails if not
        #[arg(long, value_name = "FILE", num_args = 0..=1, default_missing_value = "-",
              conflicts_with_all = ["output", "shares"])]
        check: Option<PathBuf>,
        /// Write the vault's backup hosts into the kit file FILE (and its QR code),
        /// leaving its secret as it is: `hearth recover` then finds the vault without
        /// --host. Run it after `hearth backup add`
        #[arg(long, value_name = "FILE",
              conflicts_with_all = ["output", "shares", "check", "passphrase_file"])]
        hosts: Option<PathBuf>,
    },
    /// The vault's key epoch: which key signs new grants and who holds it; or rotate it
    Keys {
        #[command(subcommand)]
        command: Option<KeysCommand>,
    },
    /// Back the vault up to hosts that keep it sealed and can read none of it: add a
    /// host with the code it printed, or see how each stands
    Backup {
        #[command(subcommand)]
        command: Option<BackupCommand>,
    },
    /// Run a backup host: keep other vaults' backups, sealed, in this HOME (which holds
    /// no vault of its own); or make an invite code for a vault, or list the vaults kept
    Host {
        #[command(subcommand)]
        command: Option<HostCommand>,
        /// Where devices reach the host (repeatable) [default: TCP and QUIC on port 7475]
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<hearth_node::Multiaddr>,
        /// The host's local API (for `hearth host invite`) [default: 127.0.0.1, any port]
        #[arg(long, value_name = "ADDR", value_parser = crate::config::parse_api_addr)]
        api: Option<SocketAddr>,
        /// What each vault enrolled from now on may store, in MiB [default: 10240]
        #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
        quota_mb: Option<u64>,
    },
    /// Grant a service a view: these collections, these fields, these records, until then
    Grant {
        /// The service's name, as you will see it in `hearth grants` and the audit log
        service: String,
        /// What it may read: comma-separated COLLECTION or COLLECTION.FIELD[.FIELD];
        /// `NAME*` is a family: NAME and every NAME-… collection, also ones made later
        /// (`'calendar*'` lets a phone make calendars)
        #[arg(long, value_name = "SCOPES")]
        read: Option<String>,
        /// What it may create or change: comma-separated COLLECTION or COLLECTION.FIELD
        /// (separate from --read: `--read contacts.name --write contacts.note` reads only
        /// the name and changes only the note)
        #[arg(long, value_name = "SCOPES")]
        write: Option<String>,
        /// Calendars (comma-separated; `calendar*` for all) whose busy times it may ask
        /// for (CalDAV free-busy-query) and nothing else of them: a service that
        /// arranges appointments
        #[arg(long, value_name = "CALENDARS")]
        free_busy: Option<String>,
        /// Only records whose FIELD equals VALUE (or, for a list, contains it), for reading
        /// and writing alike; VALUE `3` or `true` also matches the text "3"/"true", a
        /// quoted "3" only the text; FIELD^=/FOLDER: a path at or under a folder (files:
        /// `path^=/Photos` gives one folder as the share); repeatable
        #[arg(long = "where", value_name = "FIELD=VALUE")]
        filters: Vec<String>,
        /// How long it lasts: e.g. 30d, 12h, 90m, or never [default: 30d]
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Why: shown in `hearth grants` and the audit log
        #[arg(long, value_name = "TEXT")]
        purpose: Option<String>,
        /// Bind the grant to a remote service's PeerId
        #[arg(long, value_name = "PEER_ID")]
        to: Option<String>,
        /// At most N requests a minute (per device), e.g. 60/min
        #[arg(long, value_name = "N/min")]
        rate: Option<String>,
        /// Also issue a short password for this grant (shown once), for apps that log in
        /// with a user name and password, such as contacts and calendar apps (CardDAV,
        /// CalDAV at /dav/); any user name works. Prints how a phone connects (the LAN
        /// address, the certificate's fingerprint, a QR code DAVx⁵ reads)
        #[arg(long)]
        app_password: bool,
        /// With --app-password: also write an Apple configuration profile (iPhone,
        /// iPad, macOS: the CardDAV and CalDAV accounts and the LAN certificate) to FILE.
        /// It holds the password: give it to the device and delete it
        #[arg(long, value_name = "FILE", requires = "app_password")]
        mobileconfig: Option<std::path::PathBuf>,
    },
    /// List grants: service, scope, purpose, issued, expires, last used, status
    Grants,
    /// Revoke a grant at once, and show what the service already saw
    Revoke { grant_id: String },
    /// Extend a grant: it expires DURATION from now; the service keeps its token and
    /// app password (a phone needs no new setup). Audited.
    Extend {
        grant_id: String,
        /// From now: 30d, 12h, 2w, 1y, … or never
        #[arg(long, value_name = "DURATION")]
        expires: String,
    },
    /// Show the audit log of service accesses, or verify its hash chains
    Audit {
        /// Only this grant's accesses
        #[arg(long, value_name = "GRANT_ID")]
        grant: Option<String>,
        /// Check every entry's hash chain; fails naming the first entry that does not verify
        #[arg(long)]
        verify: bool,
    },
    /// Work with grant tokens (as a service: needs no vault)
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Import a vCard (.vcf) or iCalendar (.ics) file: every entry, or nothing if one
    /// cannot be read; importing again updates (by UID) instead of duplicating. Or mail;
    /// or, with --all, restore a `hearth export --all` directory
    #[command(group = clap::ArgGroup::new("what").required(true).args(["kind", "all"]))]
    Import {
        /// What the file holds
        #[arg(value_enum, requires = "file")]
        kind: Option<PimKind>,
        /// The file (- for stdin); for mail, an mbox file, a Maildir directory, or
        /// imap[s]://USER@HOST[:PORT][/FOLDER] (every folder when none is named)
        file: Option<PathBuf>,
        /// Restore this `hearth export --all` directory: its blobs, then every
        /// collection's records with their references to blobs pointing at the blobs
        /// restored. Records the vault lacks are created; those it has are left as they
        /// are (the ones that differ are named). Running it again is safe
        #[arg(long, value_name = "DIR", conflicts_with_all = ["into", "folder", "password_file", "full"])]
        all: Option<PathBuf>,
        /// Into this collection instead of `contacts` / `calendar` / `mail` (its name
        /// must start with contacts-, calendar- or mail-)
        #[arg(long, value_name = "COLLECTION")]
        into: Option<String>,
        /// Mail: the folder the messages are in [default: the mbox file's name, or a
        /// Maildir's or IMAP server's own folders]
        #[arg(long, value_name = "NAME")]
        folder: Option<String>,
        /// Mail from imap[s]://USER@HOST[:PORT][/FOLDER]: the file holding the password
        /// (its first line)
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Mail from IMAP: fetch every message again (with its flags as they are now),
        /// not only those that arrived since the last import of the folder
        #[arg(long)]
        full: bool,
    },
    /// Print a one-time login link to the web dashboard (it works once, for 10 minutes)
    Dashboard {
        /// A link for another machine on the LAN (a headless home server): the LAN
        /// listener's address, over TLS (needs `hearth up --lan`)
        #[arg(long)]
        lan: bool,
    },
    /// Export contacts as one vCard file or the calendar as one iCalendar file; or,
    /// with --all, everything into a directory, readable without Hearth
    #[command(group = clap::ArgGroup::new("what").required(true).args(["kind", "all"]))]
    Export {
        /// What to export
        #[arg(value_enum)]
        kind: Option<PimKind>,
        /// Everything, at one moment, into the directory -o DIR (new or empty): records
        /// as JSON, contacts as vCard, calendars as iCalendar, blobs as files with
        /// their names, devices, grants and the audit log as JSON
        #[arg(long, requires = "output", conflicts_with = "from")]
        all: bool,
        /// Write to this file (with --all: this directory) instead of stdout
        #[arg(short, long, value_name = "FILE|DIR")]
        output: Option<PathBuf>,
        /// From this collection instead of `contacts` / `calendar` / `mail`
        #[arg(long, value_name = "COLLECTION")]
        from: Option<String>,
        /// Mail: write a Maildir into this directory instead of an mbox file
        #[arg(long, value_name = "DIR", conflicts_with_all = ["all", "output"])]
        maildir: Option<PathBuf>,
    },
    /// Read back and verify everything on this device: every sealed value of the store,
    /// every collection, every chunk of every blob, the audit log's hash chains
    Check {
        /// First make again what this device derives from the records (the search
        /// index), from the records
        #[arg(long)]
        repair: bool,
    },
    /// Find the records that hold every word of QUERY (in any field: names, emails,
    /// notes, file names and paths, a photo's camera, a song's artist), best first.
    /// `hearth find ada` or `hearth find contacts "ada london"`
    Find {
        /// A collection to look in, then the words; or only the words
        #[arg(value_name = "[COLLECTION] QUERY", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// At most this many [default: 20; at most 200]
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Print shell completions: `hearth completions bash > ~/.local/share/bash-completion/completions/hearth`
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): every command, FILES and ENVIRONMENT, on one page:
    /// `hearth man > ~/.local/share/man/man1/hearth.1`, then `man hearth`
    Man,
    /// Store or fetch blobs (photos, documents: large or binary content)
    Blob {
        #[command(subcommand)]
        command: BlobCommand,
    },
    /// Your files (documents, photos, music, books) in folders: the `files` collection
    File {
        #[command(subcommand)]
        command: FileCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum FileCommand {
    /// Store a local file at PATH in the vault (default: /NAME); a PATH ending in /
    /// is a folder; the folders it needs are made
    Put {
        file: PathBuf,
        path: Option<String>,
        /// The content type, e.g. image/jpeg [default: guessed from the name]
        #[arg(long = "type", value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// What a folder holds (default: /), or what a file is
    Ls { path: Option<String> },
    /// Fetch a file's bytes, to a local file or to stdout (not to a terminal)
    Get {
        path: String,
        /// Write to this file instead of stdout
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
    },
    /// Make a folder (and the folders it needs)
    Mkdir { path: String },
    /// Move or rename a file or folder
    Mv {
        from: String,
        to: String,
        /// Replace what is at TO
        #[arg(long)]
        force: bool,
    },
    /// Copy a file or folder (a copy names the same stored bytes: no space is used)
    Cp {
        from: String,
        to: String,
        /// Replace what is at TO
        #[arg(long)]
        force: bool,
    },
    /// Remove a file, or a folder with everything in it
    Rm { path: String },
}

/// Contacts (vCard) or calendar (iCalendar).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PimKind {
    Contacts,
    Calendar,
    Mail,
}

impl PimKind {
    pub fn collection(self) -> &'static str {
        match self {
            PimKind::Contacts => "contacts",
            PimKind::Calendar => "calendar",
            PimKind::Mail => "mail",
        }
    }

    /// The collection to use: the default one, or `chosen` if it holds this kind
    /// (`contacts…` for contacts, `calendar…` for calendars).
    pub fn collection_or(self, chosen: Option<String>) -> anyhow::Result<String> {
        let Some(chosen) = chosen else {
            return Ok(self.collection().to_owned());
        };
        let fits = match self {
            PimKind::Contacts => {
                hearth_node::pim::Kind::of(&chosen) == Some(hearth_node::pim::Kind::Contacts)
            }
            PimKind::Calendar => {
                hearth_node::pim::Kind::of(&chosen) == Some(hearth_node::pim::Kind::Calendar)
            }
            PimKind::Mail => hearth_protocol::CollectionName::parse(&chosen)
                .is_ok_and(|name| hearth_node::mail::is_mail(&name)),
        };
        if fits {
            Ok(chosen)
        } else {
            let base = self.collection();
            anyhow::bail!(
                "collection {chosen:?} cannot hold {base}: its name must be {base} or start with {base}-"
            )
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum BlobCommand {
    /// Store a file (- for stdin) and print its id; it keeps the file's name and type
    Put {
        file: PathBuf,
        /// The name to keep [default: the file's name]
        #[arg(long)]
        name: Option<String>,
        /// The content type, e.g. image/jpeg [default: guessed from the name]
        #[arg(long = "type", value_name = "TYPE")]
        content_type: Option<String>,
    },
    /// List the vault's blobs: id, size, type, name (and those still arriving here)
    Ls,
    /// Remove a blob from every device of the vault and free its space (refused while
    /// records name it, unless --force)
    Rm {
        /// The blob's id, or a unique start of it (see `hearth blob ls`)
        id: String,
        /// Remove it even though records name it (they keep the id; `hearth check`
        /// reports them)
        #[arg(long)]
        force: bool,
    },
    /// Fetch a blob by id, to a file or to stdout (not to a terminal)
    Get {
        /// The blob's id, or a unique start of it
        id: String,
        /// Write to this file instead of stdout
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Replace FILE if it exists
        #[arg(long)]
        force: bool,
        /// A picture's thumbnail instead (a JPEG whose longest side is PIXELS,
        /// rounded up to 128, 256, 512 or 1024)
        #[arg(long, value_name = "PIXELS")]
        thumbnail: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DevicesCommand {
    /// Remove a device: it gets nothing written from now on, on every device
    Remove {
        /// The device: its PeerId, a unique start of it, or its name if no other device
        /// has it (see `hearth devices`)
        device: String,
    },
    /// Give a device a name (every device shows it once it syncs)
    Rename {
        /// The device: its PeerId, a unique start of it, or its unique name
        device: String,
        /// The new name (1 to 64 characters)
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Enroll a backup host with the code `hearth host invite` printed on it (the vault
    /// needs a recovery kit first); every device then uploads to it as the vault changes
    Add {
        /// The host's code; @FILE reads it from a file, - from stdin
        #[arg(value_name = "CODE|@FILE|-")]
        code: String,
    },
    /// Each backup host: whether it holds everything, what it uses, the last upload
    Status,
    /// Check each backup host: its whole chain of manifests read and checked, and a
    /// sample of the objects a restore would read proven held (without downloading
    /// them); fails, naming what is wrong, if any host does not hold up
    Verify {
        /// The restore drill: also restore from the host, with the kit, into a scratch
        /// HOME (removed afterwards), and compare it with this vault record by record
        /// and blob by blob
        #[arg(long, requires = "kit")]
        restore: bool,
        /// The recovery kit (its file, or - for its words or two shares on stdin)
        #[arg(long, value_name = "FILE|-")]
        kit: Option<std::path::PathBuf>,
        /// The kit file's passphrase, if it was made with one
        #[arg(long, value_name = "F")]
        kit_passphrase_file: Option<std::path::PathBuf>,
    },
    /// Free space on each backup host, with the recovery kit (a device alone can add to
    /// a host, never delete): the whole vault is uploaded again as new manifests (what
    /// the host holds already is named, not sent), the host's chain starts there, and
    /// what it no longer names is deleted — earlier versions of records, blobs removed.
    /// Given a kit the vault's kit replaced, deletes the copy kept under it instead
    Prune {
        /// The vault's recovery kit, or one it replaced (its file, or - for its words or
        /// two shares on stdin)
        #[arg(long, value_name = "FILE|-")]
        kit: std::path::PathBuf,
        /// The kit file's passphrase, if it was made with one
        #[arg(long, value_name = "F")]
        kit_passphrase_file: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum HostCommand {
    /// Print a one-time code (valid a day) with which a vault enrolls this host
    Invite,
    /// The vaults this host keeps: an opaque name and sizes each, nothing else
    Vaults,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a new epoch key now, sealed to every device of the vault (removing a device
    /// does this by itself): what is made from now on opens with no older key
    Rotate,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a narrower token: only these reads (and writes), only until then. Nothing
    /// can widen a token.
    Attenuate {
        /// The token to narrow; @FILE reads it from a file, - from stdin
        #[arg(value_name = "TOKEN|@FILE|-")]
        token: String,
        /// What the new token may read: COLLECTION or COLLECTION.FIELD, comma-separated
        #[arg(long, value_name = "SCOPES")]
        read: String,
        /// What it may still write (same form); without it the new token cannot write
        #[arg(long, value_name = "SCOPES")]
        write: Option<String>,
        /// Expire sooner, e.g. 1h
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
    },
}
