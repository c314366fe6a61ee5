//! A client of a running node's local API: finds it through `HOME/api.addr`, checks
//! that what answers there is this HOME's node, then presents `HOME/owner.token`, and
//! turns JSON errors into one-line messages.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use hearth_node::home::Home;
use hearth_node::keys::{self, OwnerToken};
use hearth_protocol::api::{ErrorBody, HelloRequest, HelloResponse, identity_proof};
use rand::RngCore;
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use subtle::ConstantTimeEq;

/// The node refused a request: its error code and message (the code is said once,
/// as `--json`'s `code`, not repeated in the message).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NodeAnswered {
    pub code: String,
    pub message: String,
}

/// A failure of the CLI itself with the code `--json` gives it (`no_vault`,
/// `not_running`, …); the node's own refusals are [`NodeAnswered`].
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Coded {
    pub code: &'static str,
    pub message: String,
}

pub fn coded(code: &'static str, message: String) -> anyhow::Error {
    anyhow::Error::new(Coded { code, message })
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: OwnerToken,
}

impl Client {
    /// Connects to the node of `home`, and checks it is that node before the owner
    /// token is ever sent: after a crash `api.addr` may name a port another process
    /// now holds.
    pub async fn connect(home: &Home) -> anyhow::Result<Self> {
        let root = home.root().display();
        if home.is_host() {
            bail!("{root} is a backup host's HOME, not a vault's (`hearth host --help`)");
        }
        if !home.has_vault() {
            return Err(coded(
                "no_vault",
                format!(
                    "{root} is not a Hearth vault; create one with `hearth --home {root} up` (or `hearth init`)"
                ),
            ));
        }
        Self::connect_to(home).await
    }

    /// Connects to the backup host (`hearth host`) of `home`, as [`Client::connect`].
    pub async fn connect_host(home: &Home) -> anyhow::Result<Self> {
        let root = home.root().display();
        if !home.is_host() {
            bail!("{root} is not a backup host's HOME; start one with `hearth --home {root} host`");
        }
        Self::connect_to(home).await
    }

    async fn connect_to(home: &Home) -> anyhow::Result<Self> {
        let addr = std::fs::read_to_string(home.api_addr()).map_err(|_| no_node(home, None))?;
        let addr = addr.trim().to_owned();
        let token = keys::read_owner_token(home).with_context(|| {
            format!(
                "cannot read the owner token {}",
                home.owner_token().display()
            )
        })?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .build()
            .context("cannot set up the HTTP client")?;
        let client = Self {
            http,
            base: format!("http://{addr}"),
            token,
        };
        client.check_identity(home).await?;
        Ok(client)
    }

    /// Asks the node to prove it holds the hash of this HOME's owner token.
    async fn check_identity(&self, home: &Home) -> anyhow::Result<()> {
        let mut challenge = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut challenge);
        let request = HelloRequest {
            challenge: data_encoding::HEXLOWER.encode(&challenge),
        };
        let impostor = || {
            anyhow!(
                "the process answering at {} is not the node of {} (it cannot prove it); the owner token was not sent. Is a node running? Start one with `hearth --home {} up`",
                self.base,
                home.root().display(),
                home.root().display()
            )
        };
        let response = self
            .http
            .post(format!("{}/v1/hello", self.base))
            .json(&request)
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    no_node(home, Some(&self.base))
                } else {
                    impostor()
                }
            })?;
        if !response.status().is_success() {
            return Err(impostor());
        }
        let answer: HelloResponse = response.json().await.map_err(|_| impostor())?;
        let expected = identity_proof(
            &keys::token_hash(self.token.as_str().as_bytes()),
            &challenge,
        );
        let proof = data_encoding::HEXLOWER_PERMISSIVE
            .decode(answer.proof.as_bytes())
            .map_err(|_| impostor())?;
        if !bool::from(proof.as_slice().ct_eq(&expected)) {
            return Err(impostor());
        }
        Ok(())
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.as_str())
    }

    /// Sends the request; a non-2xx answer becomes an error with the node's message.
    pub async fn send(&self, home: &Home, request: RequestBuilder) -> anyhow::Result<Response> {
        self.answer(home, request.send().await).await
    }

    /// What a request sent by hand (on a task of its own, say) came back with: as
    /// [`Client::send`] gives it.
    pub async fn answer(
        &self,
        home: &Home,
        sent: reqwest::Result<Response>,
    ) -> anyhow::Result<Response> {
        let response = sent.map_err(|e| {
            if e.is_connect() {
                no_node(home, Some(&self.base))
            } else {
                anyhow!("the node did not answer properly: {e}")
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(NodeAnswered {
                code: body.error.code,
                message: body.error.message,
            }
            .into()),
            Err(_) => bail!("the node answered {status}"),
        }
    }

    /// Sends the request and reads the answer as `T`.
    pub async fn json<T: DeserializeOwned>(
        &self,
        home: &Home,
        request: RequestBuilder,
    ) -> anyhow::Result<T> {
        let response = self.send(home, request).await?;
        response
            .json()
            .await
            .context("the node's answer is not what this version of the CLI expects")
    }
}

fn no_node(home: &Home, addr: Option<&str>) -> anyhow::Error {
    let root = home.root().display();
    let why = match addr {
        Some(addr) => format!(" (nothing answers at {addr})"),
        None => String::new(),
    };
    if home.is_host() {
        return coded(
            "not_running",
            format!(
                "no backup host is running for {root}{why}; start it with `hearth --home {root} host`"
            ),
        );
    }
    coded(
        "not_running",
        format!(
            "no Hearth node is running for {root}{why}; start one with `hearth --home {root} up`"
        ),
    )
}

/// A secret given on the command line (an invite code, a token): the text itself,
/// `@FILE` for a file holding it, or `-` to read it from stdin, so it need not sit in
/// the shell's history or the process list. Surrounding white space is dropped.
pub fn read_secret_arg(arg: &str, what: &str) -> anyhow::Result<zeroize::Zeroizing<String>> {
    let bytes = zeroize::Zeroizing::new(read_data_arg(arg)?);
    let text =
        std::str::from_utf8(&bytes).with_context(|| format!("the {what} is not UTF-8 text"))?;
    let text = text.trim();
    if text.is_empty() {
        anyhow::bail!("the {what} is empty");
    }
    Ok(zeroize::Zeroizing::new(text.to_owned()))
}

/// Reads a record argument: inline JSON, `@FILE`, or `-` for stdin.
pub fn read_data_arg(arg: &str) -> anyhow::Result<Vec<u8>> {
    if arg == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read stdin")?;
        Ok(buf)
    } else if let Some(path) = arg.strip_prefix('@') {
        std::fs::read(Path::new(path)).with_context(|| format!("cannot read {path}"))
    } else {
        Ok(arg.as_bytes().to_vec())
    }
}
