//! A client of a running node's local API: finds it through `HOME/api.addr`, presents
//! `HOME/owner.token`, and turns JSON errors into one-line messages.

use std::path::Path;

use anyhow::{Context, anyhow, bail};
use hearth_node::home::Home;
use hearth_node::keys::{self, OwnerToken};
use hearth_protocol::api::ErrorBody;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::Value;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: OwnerToken,
}

impl Client {
    pub fn connect(home: &Home) -> anyhow::Result<Self> {
        let root = home.root().display();
        if !home.has_vault() {
            bail!(
                "{root} is not a Hearth vault; create one with `hearth --home {root} up` (or `hearth init`)"
            );
        }
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
        Ok(Self {
            http,
            base: format!("http://{addr}"),
            token,
        })
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(self.token.as_str())
    }

    /// Sends the request; a non-2xx answer becomes an error with the node's message.
    pub async fn send(&self, home: &Home, request: RequestBuilder) -> anyhow::Result<Response> {
        let response = request.send().await.map_err(|e| {
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
            Ok(body) => bail!("{} ({})", body.error.message, body.error.code),
            Err(_) => bail!("the node answered {status}"),
        }
    }

    pub async fn json(&self, home: &Home, request: RequestBuilder) -> anyhow::Result<Value> {
        let response = self.send(home, request).await?;
        response
            .json()
            .await
            .context("the node's answer is not JSON")
    }
}

fn no_node(home: &Home, addr: Option<&str>) -> anyhow::Error {
    let root = home.root().display();
    let why = match addr {
        Some(addr) => format!(" (nothing answers at {addr})"),
        None => String::new(),
    };
    anyhow!("no Hearth node is running for {root}{why}; start one with `hearth --home {root} up`")
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
