//! The web dashboard in a real browser (headless Chromium through chromedriver), against
//! a real `hearth` node: a one-time login link from the CLI opens a session (and works
//! once); a grant is previewed, created, used by a service and revoked; the audit log
//! verifies; a record is edited and the edit reaches a second device paired from the
//! dashboard; requests without a session, from a foreign Host or from a cross-site form
//! change nothing; logging out ends the session. The pages are saved as screenshots in
//! docs/screenshots. Ignored by `cargo test` (it needs Chromium); `.ci/run` installs
//! Chromium and chromedriver and runs it.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use hearth_tests::*;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::runtime::Runtime;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// How long the browser may take to show what a step expects.
const WAIT: Duration = Duration::from_secs(20);

/// A chromedriver process on a free loopback port. Dropping it kills its process group:
/// chromedriver and any browser it started, also when the test panics.
struct ChromeDriver {
    child: Child,
    url: String,
}

impl ChromeDriver {
    fn start(log: &Path) -> Self {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
            );
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let mut child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).expect("chromedriver's log file"))
            .process_group(0)
            .spawn()
            .expect("start chromedriver");
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = child.try_wait().expect("chromedriver's status");
            if exited.is_some() || start.elapsed() > WAIT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "chromedriver did not listen on port {port} ({exited:?}): {}",
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ChromeDriver {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for ChromeDriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session with a fresh profile, driven synchronously: every call runs to
/// completion on `rt`, so the test in between can use the blocking helpers.
struct Browser<'a> {
    rt: &'a Runtime,
    client: Client,
    base: String,
    _profile: tempfile::TempDir,
}

impl<'a> Browser<'a> {
    fn open(rt: &'a Runtime, driver: &ChromeDriver, base: &str) -> Self {
        let profile = tempfile::tempdir().expect("a browser profile directory");
        let Value::Object(capabilities) = json!({"goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--no-proxy-server",
                "--window-size=1280,900",
                format!("--user-data-dir={}", profile.path().display())],
        }}) else {
            unreachable!("an object")
        };
        let mut builder = ClientBuilder::rustls().expect("the WebDriver client");
        builder.capabilities(capabilities);
        let client = rt
            .block_on(builder.connect(&driver.url))
            .unwrap_or_else(|e| panic!("chromedriver opened no browser session: {e}"));
        Browser {
            rt,
            client,
            base: base.to_owned(),
            _profile: profile,
        }
    }

    /// Opens a path of the node (`/grants`) or a whole URL.
    fn goto(&self, path: &str) {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base)
        } else {
            path.to_owned()
        };
        self.rt
            .block_on(self.client.goto(&url))
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    fn url(&self) -> String {
        let url = self.rt.block_on(self.client.current_url());
        url.expect("the current URL").to_string()
    }

    fn source(&self) -> String {
        let source = self.rt.block_on(self.client.source());
        source.expect("the page source")
    }

    /// The first element matching `css`, waiting up to [`WAIT`] for it to appear.
    fn find(&self, css: &str) -> Element {
        let wait = self.client.wait().at_most(WAIT);
        match self.rt.block_on(wait.for_element(Locator::Css(css))) {
            Ok(element) => element,
            Err(e) => panic!(
                "no {css} on {} ({e}); the page: {}",
                self.url(),
                self.source().chars().take(4000).collect::<String>()
            ),
        }
    }

    /// Whether `css` matches something on the page now, without waiting.
    fn exists(&self, css: &str) -> bool {
        match self.rt.block_on(self.client.find(Locator::Css(css))) {
            Ok(_) => true,
            Err(e) if e.is_no_such_element() => false,
            Err(e) => panic!("look for {css}: {e}"),
        }
    }

    fn text(&self, css: &str) -> String {
        let element = self.find(css);
        let text = self.rt.block_on(element.text());
        text.unwrap_or_else(|e| panic!("the text of {css}: {e}"))
    }

    /// The current value of a form field.
    fn value(&self, css: &str) -> String {
        let element = self.find(css);
        let value = self.rt.block_on(element.prop("value"));
        value.expect("a value").unwrap_or_default()
    }

    /// Clicks `css` (a submit button: the click returns once the next page has loaded).
    fn click(&self, css: &str) {
        let element = self.find(css);
        let clicked = self.rt.block_on(element.click());
        clicked.unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    /// Replaces what the field `css` holds with `text`, typed.
    fn fill(&self, css: &str, text: &str) {
        let element = self.find(css);
        let cleared = self.rt.block_on(element.clear());
        cleared.unwrap_or_else(|e| panic!("clear {css}: {e}"));
        let typed = self.rt.block_on(element.send_keys(text));
        typed.unwrap_or_else(|e| panic!("type into {css}: {e}"));
    }

    /// Chooses `path` in the file input `css`.
    fn attach(&self, css: &str, path: &Path) {
        let element = self.find(css);
        let typed = self
            .rt
            .block_on(element.send_keys(path.to_str().expect("a UTF-8 path")));
        typed.unwrap_or_else(|e| panic!("choose a file in {css}: {e}"));
    }

    /// Waits until the value of the form field `css` is `wanted` (the page it is on
    /// may still be the one a form is leaving).
    fn wait_value(&self, css: &str, wanted: &str) {
        let start = Instant::now();
        loop {
            let value = self
                .rt
                .block_on(async {
                    let element = self.client.find(Locator::Css(css)).await.ok()?;
                    element.prop("value").await.ok()?
                })
                .unwrap_or_default();
            if value == wanted {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{css} never held {wanted:?}: {value:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Opens the `<details>` `css` (its summary clicked) until `inside` shows
    /// `needle`: the page may still be the one a form is leaving, whose elements go
    /// stale under a click.
    fn open_until(&self, css: &str, inside: &str, needle: &str) {
        let start = Instant::now();
        loop {
            let text = self
                .rt
                .block_on(async {
                    let details = self.client.find(Locator::Css(css)).await.ok()?;
                    if details.attr("open").await.ok()?.is_none() {
                        let summary = details.find(Locator::Css("summary")).await.ok()?;
                        summary.click().await.ok()?;
                    }
                    let element = self.client.find(Locator::Css(inside)).await.ok()?;
                    element.text().await.ok()
                })
                .unwrap_or_default();
            if text.to_lowercase().contains(&needle.to_lowercase()) {
                return;
            }
            assert!(
                start.elapsed() < WAIT,
                "{inside} never showed {needle:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` contains `needle` (any case); returns the text.
    fn wait_text(&self, css: &str, needle: &str) -> String {
        let start = Instant::now();
        loop {
            // The page may be replaced between finding the element and reading it (a
            // form's answer still loading): that is "not yet", not a failure.
            let text = self
                .rt
                .block_on(async {
                    let element = self.client.find(Locator::Css(css)).await.ok()?;
                    element.text().await.ok()
                })
                .unwrap_or_default();
            if text.to_lowercase().contains(&needle.to_lowercase()) {
                return text;
            }
            assert!(
                start.elapsed() < WAIT,
                "{css} never showed {needle:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the browser is at a URL starting with `prefix`.
    fn wait_url(&self, prefix: &str) {
        let start = Instant::now();
        while !self.url().starts_with(prefix) {
            assert!(
                start.elapsed() < WAIT,
                "never got to {prefix}: {}",
                self.url()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves the page as docs/screenshots/`name`.
    fn screenshot(&self, name: &str) {
        let png = self.rt.block_on(self.client.screenshot());
        let png = png.unwrap_or_else(|e| panic!("screenshot {name}: {e}"));
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
        std::fs::create_dir_all(&dir).expect("create docs/screenshots");
        std::fs::write(dir.join(name), png).expect("write a screenshot");
    }

    /// Makes the window `width` × `height` CSS pixels (a phone: 390 × 844).
    fn resize(&self, width: u32, height: u32) {
        let resized = self.rt.block_on(self.client.set_window_size(width, height));
        resized.unwrap_or_else(|e| panic!("resize the window: {e}"));
    }

    fn close(self) {
        let closed = self.rt.block_on(self.client.close());
        closed.expect("close the browser session");
    }
}

/// Replaces record `contacts/id` with `json` in its dashboard page, and waits until the
/// page shows `name`.
/// (The JSON is the page's advanced view, folded away under the form.)
fn edit_record(browser: &Browser<'_>, id: &str, json: &str, name: &str) {
    browser.goto(&format!("/data/contacts/{id}"));
    browser.click("#advanced summary");
    browser.fill("#edit-record textarea[name=json]", json);
    browser.click("#save-button");
    browser.open_until("#advanced", "#record-json", name);
}

/// `text` with every byte but letters and digits percent-encoded, for a `data:` URL.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[test]
#[ignore = "needs chromium and chromedriver: run by .ci/run, which installs them"]
fn the_dashboard_in_a_browser() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    node.json(&[
        "put",
        "contacts",
        "ada",
        r#"{"name":"Ada","email":"ada@example.org","tags":["math"]}"#,
    ]);
    node.json(&[
        "put",
        "contacts",
        "bob",
        r#"{"name":"Bob","tags":["work"]}"#,
    ]);
    let base = node.base_url();
    let api = Api::new(&node);
    let view = |token: &str| api.send(api.raw(Method::GET, "/v1/view/contacts").bearer_auth(token));

    // rustls is built here with both ring and aws-lc-rs (hyper-rustls, under the
    // WebDriver client, asks for the latter), so it picks no provider by itself.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let driver = ChromeDriver::start(&t.dir().join("chromedriver.log"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let browser = Browser::open(&rt, &driver, &base);

    // A one-time login link from the CLI: the overview, and no owner token in the page.
    let login = node.json(&["dashboard"]);
    let login_url = login["url"].as_str().expect("a url").to_owned();
    assert!(login_url.starts_with(&format!("{base}/login/")), "{login}");
    browser.goto(&login_url);
    browser.find("#this-device");
    assert_eq!(
        browser.url(),
        format!("{base}/"),
        "redirected to the overview"
    );
    assert_eq!(browser.text("h1").trim(), "Overview");
    browser.screenshot("overview.png");
    assert!(
        !browser.source().contains(&node.owner_token()),
        "the owner token is in the page"
    );

    // The link works once; another browser has no session.
    let other = Browser::open(&rt, &driver, &base);
    other.goto(&login_url);
    other.find("#login-failed");
    other.goto("/grants");
    other.find("#login-needed");
    other.close();

    // A grant: previewed (only Ada matches), created, and the service sees what it allows.
    browser.goto("/grants");
    for (name, value) in [
        ("service", "newsletter"),
        ("purpose", "monthly letter"),
        ("read", "contacts.name,contacts.email"),
        ("where", "tags=math"),
    ] {
        browser.fill(&format!("#new-grant [name={name}]"), value);
    }
    // Empty: the default (30 days, a year with an app password), said in the preview.
    assert_eq!(browser.value("#new-grant [name=expires]"), "");
    browser.click("#preview-button");
    let preview = browser.text("#grant-preview");
    assert!(
        preview.contains("name") && preview.contains("email"),
        "{preview}"
    );
    let records = browser.text("#preview-records");
    assert!(
        records.contains("Ada") && !records.contains("Bob"),
        "{records}"
    );
    browser.screenshot("grants-preview.png");
    browser.click("#confirm-button");
    let token = browser.text("#grant-token").trim().to_owned();
    let grant = browser.text("#grant-id").trim().to_owned();
    browser.screenshot("grant-created.png");
    let (status, seen) = view(&token);
    assert_eq!(status, 200, "{seen}");
    let seen = seen.as_array().expect("a list of records");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["name"], "Ada");
    assert!(seen[0].get("tags").is_none(), "{seen:?}");

    // Revoked from its row: the report names the service, the token is refused.
    browser.goto("/grants");
    let row = format!(r#"tr[data-grant="{grant}"]"#);
    browser.find(&row);
    browser.screenshot("grants.png");
    // Extended from its row (a year, the form's default): same token.
    let before = node.json(&["grants"])[0]["expires_at"].as_u64().unwrap();
    browser.click(&format!("{row} form.extend button"));
    eventually("the grant is extended", || {
        let after = node.json(&["grants"])[0]["expires_at"].as_u64().unwrap();
        (after >= before + 300 * 86_400).then_some(())
    });
    browser.find(&row);
    assert_eq!(view(&token).0, 200);
    browser.click(&format!("{row} form.revoke button"));
    let report = browser.text("#revoke-report");
    assert!(report.contains("newsletter"), "{report}");
    browser.screenshot("revoke.png");
    assert_eq!(view(&token).0, 403);

    // The audit log shows the service's reads and verifies.
    browser.goto("/audit");
    let audit = browser.text("#audit");
    assert!(audit.contains("newsletter"), "{audit}");
    browser.click("#verify-button");
    browser.wait_text("#verify-result", "intact");
    browser.screenshot("audit.png");

    // A contact edited with its form is the record the CLI reads; its JSON, edited as
    // the advanced view, too.
    browser.goto("/data/contacts/ada");
    browser.fill("#edit-fields input[name=name]", "Ada Lovelace");
    browser.fill(
        "#edit-fields input[name=organization]",
        "Analytical Engines",
    );
    browser.click("#save-fields");
    eventually("the form's edit", || {
        let ada = node.json(&["get", "contacts", "ada"]);
        (ada["name"] == "Ada Lovelace" && ada["organization"] == "Analytical Engines").then_some(())
    });
    browser.goto("/data/contacts/ada");
    browser.screenshot("record.png");
    let ada_king = r#"{"name":"Ada King","email":"ada@example.org","tags":["math"]}"#;
    edit_record(&browser, "ada", ada_king, "Ada King");
    assert_eq!(node.json(&["get", "contacts", "ada"])["name"], "Ada King");
    // A new contact from the collection's page.
    browser.goto("/data/contacts");
    browser.click("#new-record summary");
    browser.fill("#new-fields input[name=name]", "Grace Hopper");
    browser.fill("#new-fields textarea[name=emails]", "grace@navy.example");
    browser.click("#make-record");
    browser.wait_value("#edit-fields input[name=name]", "Grace Hopper");
    let contacts = node.json(&["ls", "contacts"]).to_string();
    assert!(contacts.contains("grace@navy.example"), "{contacts}");
    browser.goto("/data");
    assert!(
        browser.source().contains("contacts"),
        "/data lists contacts"
    );
    browser.goto("/data/contacts");
    assert!(browser.source().to_lowercase().contains("bob"), "no bob");
    // A .vcf file imported from the data page.
    browser.goto("/data");
    let vcf = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/pim/apple.vcf");
    browser.attach("#import input[name=file]", &vcf);
    browser.click("#import-button");
    browser.wait_text("#import-report", "new");
    browser.goto("/data/contacts");
    assert!(
        browser.source().contains("Lovelace"),
        "the imported cards are listed"
    );
    browser.goto("/data");
    browser.screenshot("data.png");

    // Files and photos: a folder made and a photo uploaded through the forms, shown
    // with its thumbnail and camera, in the gallery, and found by the search box.
    browser.goto("/data/files");
    browser.fill("#mkdir input[name=name]", "Trip");
    browser.click("#mkdir button");
    browser.wait_text("#files", "Trip");
    browser.goto("/data/files?path=%2FTrip");
    let beach = t.path().join("beach.jpg");
    std::fs::write(&beach, hearth_node::filemeta::samples::camera_jpeg()).unwrap();
    browser.attach("#upload input[name=file]", &beach);
    browser.click("#upload-button");
    browser.wait_text("#files", "Canon EOS R5");
    assert!(
        browser.exists("#files td.thumb img"),
        "{}",
        browser.source()
    );
    browser.screenshot("files.png");
    browser.goto("/data/photos");
    browser.wait_text("main", "2026-07");
    browser.screenshot("photos.png");
    browser.fill("#search input[name=q]", "canon\u{E007}");
    browser.wait_text("#found", "/Trip/beach.jpg");

    // Pairing from the dashboard: the code (and its QR) joins B, B shows online, and an
    // edit in the dashboard reaches B.
    browser.goto("/devices");
    browser.click("#pair-button");
    let code = browser.text("#invite-code").trim().to_owned();
    assert!(code.starts_with("hearth1"), "{code}");
    browser.find("#invite-qr svg");
    browser.screenshot("devices-pair.png");
    let b_home = TestHome::new();
    let joined = hearth_json(b_home.path(), &["join", &code]);
    assert_eq!(joined["inviter"], node.peer_id.as_str());
    let b = spawn_node(b_home.path(), &[]);
    let state = format!(r#"tr[data-peer="{}"] .state"#, b.peer_id);
    let start = Instant::now();
    loop {
        browser.goto("/devices");
        if browser.exists(&state) && browser.text(&state).trim().eq_ignore_ascii_case("online") {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "B never online: {}",
            browser.source()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Both devices get names of their own from the page.
    for (peer, name) in [(&node.peer_id, "home server"), (&b.peer_id, "laptop")] {
        let form = format!(r#"form.rename[action="/devices/{peer}/rename"]"#);
        browser.fill(&format!("{form} input[name=name]"), name);
        browser.click(&format!("{form} button"));
        browser.wait_text(&format!(r#"tr[data-peer="{peer}"]"#), name);
    }
    browser.screenshot("devices.png");
    eventually("the new names on B", || {
        let devices = b.json(&["devices"]);
        let names: Vec<&str> = devices
            .as_array()?
            .iter()
            .filter_map(|d| d["name"].as_str())
            .collect();
        (names.contains(&"home server") && names.contains(&"laptop")).then_some(())
    });
    let ada_byron = r#"{"name":"Ada Byron","email":"ada@example.org","tags":["math"]}"#;
    edit_record(&browser, "ada", ada_byron, "Ada Byron");
    eventually("the dashboard's edit on B", || {
        let out = b.run(&["--json", "get", "contacts", "ada"]);
        let record: Value = serde_json::from_slice(&out.stdout).ok()?;
        (out.status.success() && record["name"] == "Ada Byron").then_some(())
    });

    // Edits made apart: with B stopped, A and then B (alone, without the mesh) change
    // the same field; once B is back, A's dashboard marks the conflict with both values,
    // and the value chosen there ends it on both devices.
    b.stop();
    node.json(&["patch", "contacts", "ada", r#"{"email":"ada@a.example"}"#]);
    let alone = spawn_node(b_home.path(), &["--no-mesh"]);
    alone.json(&["patch", "contacts", "ada", r#"{"email":"ada@b.example"}"#]);
    alone.stop();
    let b = spawn_node(b_home.path(), &[]);
    eventually("the conflict on A", || {
        let (status, body) = api.send(api.request(
            Method::GET,
            "/v1/collections/contacts/records/ada/conflicts",
        ));
        (status == 200 && body["conflicts"]["email"].is_array()).then_some(())
    });
    // Counted on the overview, marked in the list, then shown in the record.
    browser.goto("/");
    let counted = browser.text("#conflicts");
    assert!(
        counted.contains("contacts: 1 record to decide"),
        "{counted}"
    );
    browser.screenshot("overview-conflicts.png");
    browser.click("#conflicts a");
    assert!(browser.text("#to-decide").contains("ada"));
    assert!(browser.exists(r#"#records tr.conflicted a[href="/data/contacts/ada"]"#));
    browser.goto("/data/contacts/ada");
    let conflicts = browser.text("#conflicts");
    assert!(
        conflicts.contains("ada@a.example") && conflicts.contains("ada@b.example"),
        "{conflicts}"
    );
    browser.screenshot("conflict.png");
    browser.click(r#"#conflicts form.resolve:has(input[value='"ada@b.example"']) button"#);
    browser.wait_value("#edit-fields textarea[name=emails]", "ada@b.example");
    let start = Instant::now();
    while browser.exists("#conflicts") {
        assert!(
            start.elapsed() < WAIT,
            "the conflict stayed: {}",
            browser.source()
        );
        std::thread::sleep(Duration::from_millis(200));
        browser.goto("/data/contacts/ada");
    }
    browser.goto("/");
    assert!(!browser.exists("#conflicts"), "{}", browser.source());
    browser.goto("/data/contacts");
    assert!(!browser.exists("#to-decide") && !browser.exists("tr.conflicted"));
    eventually("the choice on B", || {
        let out = b.run(&["--json", "get", "contacts", "ada"]);
        let record: Value = serde_json::from_slice(&out.stdout).ok()?;
        (record["email"] == "ada@b.example").then_some(())
    });

    // No session, a foreign Host, a cross-site form: refused, no grant made.
    let grants = || node.json(&["grants"]).as_array().expect("grants").clone();
    let before = grants().len();
    let form = [
        ("service", "outsider"),
        ("read", "contacts"),
        ("expires", "30d"),
        ("csrf", "guessed"),
    ];
    let answer = api.send_raw(api.raw(Method::POST, "/grants").form(&form[..]));
    assert!(matches!(answer.status, 401 | 403), "{}", answer.status);
    assert_eq!(grants().len(), before, "a grant without a session");
    let answer = api.send_raw(api.raw(Method::GET, "/").header("Host", "evil.example"));
    assert_eq!(answer.status, 421, "a foreign Host must be refused");
    let attack = format!(
        "<form method=post action={base}/grants><input name=service value=evil>\
         <input name=read value=contacts><button id=x>go</button></form>"
    );
    browser.goto(&format!("data:text/html,{}", percent_encoded(&attack)));
    browser.click("#x");
    browser.wait_url(&format!("{base}/"));
    let after = grants();
    assert!(after.iter().all(|g| g["service"] != "evil"), "{after:?}");
    assert_eq!(after.len(), before);

    // On a phone's screen.
    browser.resize(390, 844);
    browser.goto("/grants");
    browser.screenshot("phone-grants.png");
    browser.goto("/");
    browser.screenshot("phone-overview.png");
    browser.goto("/data/photos");
    browser.screenshot("phone-photos.png");
    browser.resize(1280, 900);

    // Logging out ends the session.
    browser.goto("/");
    browser.click("#logout-button");
    browser.wait_text("#message", "logged out");
    browser.goto("/grants");
    browser.find("#login-needed");
    browser.close();
    b.stop();
    node.stop();
}

/// Without a browser: the login link sets an HttpOnly, SameSite=Strict cookie and works
/// once; a logged-in POST without the session's CSRF token is refused and changes
/// nothing; every page carries a Content-Security-Policy that allows no script; a
/// foreign Host gets nothing; logout ends the session on the server.
#[test]
fn sessions_csrf_and_headers_hold_without_a_browser() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let base = node.base_url();
    let (http, url) = login_link(&node);
    assert!(url.starts_with(&format!("{base}/login/")), "{url}");

    let answer = http.get(&url).send().unwrap();
    assert_eq!(answer.status(), 303);
    let set = answer.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(attribute), "{set}");
    }
    let cookie = set.split(';').next().unwrap().to_owned();
    assert_eq!(
        http.get(&url).send().unwrap().status(),
        403,
        "a link works once"
    );

    // The overview warns of a grant about to expire, and says nothing of one that is not.
    node.json(&["grant", "soon", "--read", "contacts", "--expires", "1d"]);
    node.json(&["grant", "later", "--read", "contacts", "--expires", "30d"]);
    let overview_page = || {
        http.get(format!("{base}/"))
            .header("Cookie", &cookie)
            .send()
            .unwrap()
            .text()
            .unwrap()
    };
    let overview = overview_page();
    assert!(
        overview.contains("The grant for soon expires"),
        "{overview}"
    );
    assert!(!overview.contains("The grant for later"), "{overview}");
    assert!(
        !overview.contains("audit log"),
        "no audit warning: {overview}"
    );
    // The vault's keys and its recovery kit are shown (a kit moves the epoch on).
    assert!(
        overview.contains("epoch 0 (the vault") && overview.contains("none yet: make one"),
        "{overview}"
    );
    let kit = node.json(&["recovery-kit"]);
    let overview = overview_page();
    assert!(
        overview.contains("epoch 1 (made when") && overview.contains(kit["kit"].as_str().unwrap()),
        "{overview}"
    );
    // Backups: how to add a host, then the host and whether it holds everything.
    assert!(
        overview.contains("no backup host: with a recovery kit"),
        "{overview}"
    );
    let host_dir = tempfile::tempdir().unwrap();
    let host = spawn_host(host_dir.path(), &[]);
    let code = host.json(&["host", "invite"])["code"]
        .as_str()
        .unwrap()
        .to_owned();
    node.run(&["backup", "add", &code]);
    eventually("the host holds everything", || {
        (node.json(&["backup", "status"])["hosts"][0]["up_to_date"] == true).then_some(())
    });
    let short: String = host.peer_id[host.peer_id.len() - 8..].to_owned();
    let overview = overview_page();
    assert!(
        overview.contains(&format!("…{short}: up to date; last upload just now")),
        "{overview}"
    );
    host.stop();

    let page = http
        .get(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    let html = page.text().unwrap();
    assert!(!html.contains("<script"), "no script on a page");
    assert!(!html.contains(&node.owner_token()));
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a CSRF token in the page")
        .to_owned();

    let grants = || node.json(&["grants"]).as_array().unwrap().len();
    let before = grants();
    let form = |token: &str| {
        vec![
            ("service", "sneaky".to_owned()),
            ("read", "contacts".to_owned()),
            ("csrf", token.to_owned()),
        ]
    };
    for token in ["", "x", &csrf[..csrf.len() - 1]] {
        let answer = http
            .post(format!("{base}/grants"))
            .header("Cookie", &cookie)
            .form(&form(token))
            .send()
            .unwrap();
        assert_eq!(answer.status(), 403, "CSRF token {token:?}");
    }
    assert_eq!(grants(), before, "no grant without the CSRF token");
    let answer = http
        .post(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .form(&form(&csrf))
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.text().unwrap().contains("id=\"grant-token\""));
    assert_eq!(grants(), before + 1);
    // With an app password, the page says how a phone connects: here (no LAN) how
    // to serve the LAN.
    let mut with_password = form(&csrf);
    with_password.push(("app_password", "1".to_owned()));
    let answer = http
        .post(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .form(&with_password)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let page = answer.text().unwrap();
    assert!(page.contains("id=\"grant-password\""), "{page}");
    assert!(
        page.contains("id=\"phone-note\"") && page.contains("hearth up --lan"),
        "{page}"
    );

    // A free/busy-only grant from the form: the preview says what it sees (busy times,
    // nothing of the events), the grant made is one.
    let busy_form = vec![
        ("service", "concierge".to_owned()),
        ("free_busy", "calendar*".to_owned()),
        ("csrf", csrf.clone()),
    ];
    let preview = http
        .post(format!("{base}/grants/preview"))
        .header("Cookie", &cookie)
        .form(&busy_form)
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(
        preview.contains("concierge may ask when you are busy in calendar and every calendar-")
            && preview.contains("name=\"free_busy\" value=\"calendar*\""),
        "{preview}"
    );
    assert!(!preview.contains("will see every field"), "{preview}");
    let answer = http
        .post(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .form(&busy_form)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 200);
    let made = node.json(&["grants"]);
    let concierge = made
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["service"] == "concierge")
        .expect("the concierge's grant");
    assert_eq!(
        concierge["scope"]["collections"]["calendar*"]["free_busy"], true,
        "{concierge}"
    );
    assert!(concierge["scope"]["collections"]["calendar*"]["read"].is_null());
    // Free/busy of contacts is refused with the reason, in the preview already.
    let mut wrong = busy_form.clone();
    wrong[1].1 = "contacts".to_owned();
    let answer = http
        .post(format!("{base}/grants/preview"))
        .header("Cookie", &cookie)
        .form(&wrong)
        .send()
        .unwrap();
    assert_eq!(answer.status(), 400);
    assert!(
        answer
            .text()
            .unwrap()
            .contains("free/busy is about calendars")
    );

    // A file, downloaded with the session (and not without it).
    let file = t.path().join("portrait.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let blob = node.json(&["blob", "put", file.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let download = http
        .get(format!("{base}/data/blobs/{blob}"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(download.status(), 200);
    let disposition = download.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with("attachment") && disposition.ends_with("portrait.bin"),
        "{disposition}"
    );
    assert_eq!(download.bytes().unwrap().as_ref(), &bytes[..]);
    // A download broken off resumes where it stopped.
    let resumed = http
        .get(format!("{base}/data/blobs/{blob}"))
        .header("Cookie", &cookie)
        .header("Range", "bytes=200000-")
        .send()
        .unwrap();
    assert_eq!(resumed.status(), 206);
    assert_eq!(resumed.bytes().unwrap().as_ref(), &bytes[200_000..]);
    let anonymous = http
        .get(format!("{base}/data/blobs/{blob}"))
        .send()
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    let foreign = http
        .get(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .header("Host", "evil.example")
        .send()
        .unwrap();
    assert_eq!(foreign.status(), 421);

    let out = http
        .post(format!("{base}/logout"))
        .header("Cookie", &cookie)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .unwrap();
    assert_eq!(out.status(), 200);
    let after = http
        .get(format!("{base}/grants"))
        .header("Cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(after.status(), 401, "the session ended on the server");
    node.stop();
}

/// A client that does not follow redirects (the tests look at them), and a one-time
/// login link of `node`'s dashboard.
fn login_link(node: &NodeProcess) -> (reqwest::blocking::Client, String) {
    let http = reqwest::blocking::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let url = node.json(&["dashboard"])["url"]
        .as_str()
        .unwrap()
        .to_owned();
    (http, url)
}

/// A multipart form body of `fields` (name, file name if a file, bytes) and its
/// content type, as a browser sends a form with `enctype="multipart/form-data"`.
fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "----hearth-test-boundary-7f3a";
    let mut body = Vec::new();
    for (name, file, bytes) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some(file) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(bytes);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// A dashboard session without a browser: logged in through a one-time link, with
/// the CSRF token of the first page it opened.
struct Dashboard {
    http: reqwest::blocking::Client,
    base: String,
    cookie: String,
    csrf: String,
    first_page: String,
}

impl Dashboard {
    fn log_in(node: &NodeProcess, first: &str) -> Self {
        let (http, url) = login_link(node);
        let set = http.get(&url).send().unwrap().headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut dash = Self {
            http,
            base: node.base_url(),
            cookie: set.split(';').next().unwrap().to_owned(),
            csrf: String::new(),
            first_page: String::new(),
        };
        dash.first_page = dash.text(first);
        dash.csrf = dash
            .first_page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a CSRF token on the page")
            .to_owned();
        dash
    }

    fn get(&self, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        let answer = self
            .http
            .get(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .send()
            .unwrap();
        let status = answer.status().as_u16();
        let headers = answer.headers().clone();
        (status, headers, answer.bytes().unwrap().to_vec())
    }

    /// The page at `path`, which must answer 200.
    fn text(&self, path: &str) -> String {
        let (status, _, body) = self.get(path);
        assert_eq!(status, 200, "{path}: {}", String::from_utf8_lossy(&body));
        String::from_utf8(body).unwrap()
    }

    fn post_form(&self, path: &str, form: &[(&str, &str)]) -> reqwest::blocking::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("Cookie", &self.cookie)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(
                form.iter()
                    .map(|(k, v)| format!("{k}={}", percent_encoded(v)))
                    .collect::<Vec<_>>()
                    .join("&"),
            )
            .send()
            .unwrap()
    }
}

/// Contacts and events are edited with forms, without a browser: a new contact and a
/// new event made from the collection's page, a contact's fields changed (an address
/// kept keeps its type, the card's text follows), a change made elsewhere meanwhile
/// kept, a wrong date refused with nothing changed, and the JSON still there as the
/// advanced view.
#[test]
fn contacts_and_events_are_edited_with_forms_without_a_browser() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let card = "BEGIN:VCARD\r\nVERSION:4.0\r\nUID:u-ada\r\nFN:Ada Lovelace\r\nEMAIL;TYPE=work:ada@example.org\r\nTITLE:Countess\r\nX-PET:cat\r\nEND:VCARD\r\n";
    node.json(&[
        "put",
        "contacts",
        "ada",
        &serde_json::json!({ "vcard": card }).to_string(),
    ]);
    let dash = Dashboard::log_in(&node, "/data/contacts/ada");
    let page = &dash.first_page;
    assert!(
        page.contains(r#"id="edit-fields""#)
            && page.contains(r#"<input name="name" value="Ada Lovelace">"#)
            && page.contains(">ada@example.org</textarea>")
            && page.contains(r#"id="advanced""#),
        "{page}"
    );
    // Meanwhile an app changes the title; the form still shows the old one.
    node.json(&["patch", "contacts", "ada", r#"{"title":"Analyst"}"#]);
    let saved = dash.post_form(
        "/data/contacts/ada/fields",
        &[
            ("csrf", &dash.csrf),
            // As a browser posts the form: each field and what it showed.
            ("name", "Ada King"),
            ("name.was", "Ada Lovelace"),
            ("emails", "ada@example.org\r\nada@king.example"),
            ("emails.was", "ada@example.org"),
            ("title", "Countess"),
            ("title.was", "Countess"),
            ("groups", "math, poets"),
            ("groups.was", ""),
            ("notes", ""),
            ("notes.was", ""),
        ],
    );
    assert_eq!(saved.status(), 303);
    assert_eq!(saved.headers()["location"], "/data/contacts/ada");
    let ada = node.json(&["get", "contacts", "ada"]);
    assert_eq!(ada["name"], "Ada King");
    assert_eq!(ada["title"], "Analyst");
    assert_eq!(ada["groups"], serde_json::json!(["math", "poets"]));
    assert_eq!(
        ada["emails"][0],
        serde_json::json!({"value": "ada@example.org", "types": ["work"]})
    );
    assert_eq!(ada["emails"][1]["value"], "ada@king.example");
    let text = ada["vcard"].as_str().unwrap();
    assert!(
        text.contains("FN:Ada King")
            && text.contains("ada@king.example")
            && text.contains("X-PET:cat"),
        "{text}"
    );

    // A new contact and a new event from their collections' pages.
    let page = dash.text("/data/contacts");
    let action = |page: &str| {
        page.split(r#"id="new-fields" class="grid fields" method="post" action=""#)
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .expect("a form for a new record")
            .to_owned()
    };
    let new_contact = action(&page);
    let made = dash.post_form(
        &new_contact,
        &[
            ("csrf", &dash.csrf),
            ("new", "1"),
            ("name", "Grace Hopper"),
            ("phones", "+1 555 0100"),
        ],
    );
    assert_eq!(made.status(), 303, "{:?}", made.text());
    let id = new_contact
        .trim_start_matches("/data/contacts/")
        .trim_end_matches("/fields");
    let grace = node.json(&["get", "contacts", id]);
    assert_eq!(grace["name"], "Grace Hopper");
    assert_eq!(
        grace["phones"],
        serde_json::json!([{"value": "+1 555 0100"}])
    );
    assert_eq!(grace["uid"], id);
    // Made once: the same form again is refused.
    let again = dash.post_form(
        &new_contact,
        &[("csrf", &dash.csrf), ("new", "1"), ("name", "Grace")],
    );
    assert_eq!(again.status(), 409);
    assert_eq!(node.json(&["get", "contacts", id])["name"], "Grace Hopper");

    let new_event = action(&dash.text("/data/calendar"));
    let refused = dash.post_form(
        &new_event,
        &[
            ("csrf", &dash.csrf),
            ("new", "1"),
            ("summary", "Dentist"),
            ("start", "next tuesday"),
        ],
    );
    assert_eq!(refused.status(), 400);
    assert!(refused.text().unwrap().contains("is not a date"));
    let made = dash.post_form(
        &new_event,
        &[
            ("csrf", &dash.csrf),
            ("new", "1"),
            ("summary", "Dentist"),
            ("location", "High Street 4"),
            ("start", "2026-12-10T09:30"),
            ("end", "2026-12-10T10:00"),
        ],
    );
    assert_eq!(made.status(), 303, "{:?}", made.text());
    let id = new_event
        .trim_start_matches("/data/calendar/")
        .trim_end_matches("/fields");
    let event = node.json(&["get", "calendar", id]);
    assert_eq!(event["start"], "2026-12-10T09:30:00");
    assert_eq!(event["location"], "High Street 4");
    let page = dash.text(&format!("/data/calendar/{id}"));
    assert!(
        page.contains(r#"type="datetime-local" step="1" name="start" value="2026-12-10T09:30:00""#),
        "{page}"
    );
    // Without the token: refused, nothing changed.
    let refused = dash.post_form(
        &format!("/data/calendar/{id}/fields"),
        &[("summary", "Gone")],
    );
    assert_eq!(refused.status(), 403);
    assert_eq!(node.json(&["get", "calendar", id])["summary"], "Dentist");
    node.stop();
}

/// Files, photos and search for people, without a browser: a folder made and files
/// uploaded through the plain forms (the CSRF token checked before a byte is kept),
/// listed with thumbnails and what the camera said, downloaded, shown in the gallery
/// by month, found by the search box, and removed.
#[test]
fn files_photos_and_search_for_people_without_a_browser() {
    let t = TestHome::new();
    let node = spawn_node(t.path(), &[]);
    let dash = Dashboard::log_in(&node, "/data/files");
    let (base, http, cookie, csrf) = (&dash.base, &dash.http, &dash.cookie, &dash.csrf);
    let get = |path: &str| dash.get(path);
    let text = |path: &str| dash.text(path);
    let post_form = |path: &str, form: &[(&str, &str)]| dash.post_form(path, form);
    assert!(
        dash.first_page.contains("Nothing here yet"),
        "{}",
        dash.first_page
    );
    let made = post_form(
        "/data/files/mkdir",
        &[("csrf", csrf), ("path", "/"), ("name", "Trip")],
    );
    assert_eq!(made.status(), 303);

    let photo = hearth_node::filemeta::samples::camera_jpeg();
    let upload = |fields: &[(&str, Option<&str>, &[u8])]| {
        let (content_type, body) = multipart(fields);
        http.post(format!("{base}/data/files/upload"))
            .header("Cookie", cookie.as_str())
            .header("Content-Type", content_type)
            .body(body)
            .send()
            .unwrap()
    };
    // Without the token: refused, nothing kept.
    let refused = upload(&[
        ("path", None, b"/Trip"),
        ("file", Some("sneaky.txt"), b"no"),
    ]);
    assert_eq!(refused.status(), 403);
    let answer = upload(&[
        ("csrf", None, csrf.as_bytes()),
        ("path", None, b"/Trip"),
        ("file", Some("beach.jpg"), &photo),
        ("file", Some("notes.txt"), b"sunscreen"),
    ]);
    assert_eq!(answer.status(), 303, "{:?}", answer.text());
    assert_eq!(answer.headers()["location"], "/data/files?path=%2FTrip");
    let listed = node.json(&["file", "ls", "/Trip"]).to_string();
    assert!(
        listed.contains("beach.jpg") && listed.contains("notes.txt"),
        "{listed}"
    );
    assert!(!listed.contains("sneaky"), "{listed}");

    let folder = text("/data/files?path=%2FTrip");
    assert!(folder.contains("Canon EOS R5, 2026-07-01"), "{folder}");
    let thumb = folder
        .split("<img src=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a thumbnail")
        .to_owned();
    let (status, headers, jpeg) = get(&thumb);
    assert_eq!(
        (status, headers["content-type"].to_str().unwrap()),
        (200, "image/jpeg")
    );
    assert!(jpeg.starts_with(&[0xFF, 0xD8]));
    let (status, headers, bytes) = get("/data/files/get?path=%2FTrip%2Fnotes.txt");
    assert_eq!((status, bytes.as_slice()), (200, &b"sunscreen"[..]));
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment")
    );

    // The grant form offers what exists: collections, their fields, the folders.
    let grants_page = text("/grants");
    for option in [
        r#"<option value="files">"#,
        r#"<option value="files.path">"#,
        r#"<option value="files.meta">"#,
        r#"<option value="path^=/Trip">"#,
    ] {
        assert!(grants_page.contains(option), "{option}: {grants_page}");
    }

    let gallery = text("/data/photos");
    assert!(
        gallery.contains("<h2>2026-07</h2>")
            && gallery.contains(&thumb.replace("size=128", "size=256")),
        "{gallery}"
    );

    let found = text("/data/search?q=canon");
    assert!(
        found.contains("/Trip/beach.jpg") && found.contains("files, in /Trip"),
        "{found}"
    );
    let bad = text("/data/search?q=-");
    assert!(bad.contains("nothing to look for"), "{bad}");

    let removed = post_form(
        "/data/files/remove",
        &[("csrf", csrf), ("path", "/Trip/notes.txt")],
    );
    assert_eq!(removed.status(), 303);
    let folder = text("/data/files?path=%2FTrip");
    assert!(!folder.contains("notes.txt"), "{folder}");
    let refused = post_form("/data/files/remove", &[("path", "/Trip/beach.jpg")]);
    assert_eq!(refused.status(), 403);
    assert!(text("/data/files?path=%2FTrip").contains("beach.jpg"));
    node.stop();
}
