//! Wrong app passwords, throttled per client address.
//!
//! An app password is a second credential of a grant (100 random bits), taken by DAV
//! (HTTP Basic) and by the view routes (as a bearer token) alike. Guessing one is no
//! practical attack, but a client that keeps sending wrong ones is told to stop: after
//! [`MAX_FAILURES`] wrong passwords within a minute from one address, requests from
//! that address that carry a password are answered `429` until the minute is over,
//! before any password is looked at. Other clients, and requests with a token, are not
//! held up. Each wrong password is also audited by the door (`wrong_password`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::access::grants::looks_like_password;

/// Wrong passwords one address may send in a minute.
pub const MAX_FAILURES: u32 = 10;
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses remembered at once. When that many are held (each sent too many wrong
/// passwords this minute), further addresses share one window, the one of requests
/// whose address is unknown: a flood of addresses never frees a held one.
const MAX_ADDRESSES: usize = 4096;

/// The address a request came from, set by the server loop on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientAddr(pub IpAddr);

/// Wrong passwords per address in the current window.
#[derive(Default)]
pub struct PasswordThrottle(Mutex<HashMap<Option<IpAddr>, (Instant, u32)>>);

impl PasswordThrottle {
    /// Whether `client` may try a password now.
    fn allows(&self, client: Option<IpAddr>) -> bool {
        let windows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let client = if windows.len() >= MAX_ADDRESSES && !windows.contains_key(&client) {
            None
        } else {
            client
        };
        windows
            .get(&client)
            .is_none_or(|(start, failures)| start.elapsed() >= WINDOW || *failures < MAX_FAILURES)
    }

    /// Counts a wrong password from `client`.
    fn failed(&self, client: Option<IpAddr>) {
        let mut windows = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let mut client = client;
        if windows.len() >= MAX_ADDRESSES && !windows.contains_key(&client) {
            // Forget windows that are over, then those that hold nobody back (but not
            // the shared one, which counts the addresses beyond).
            windows.retain(|address, (start, failures)| {
                start.elapsed() < WINDOW && (address.is_none() || *failures >= MAX_FAILURES)
            });
            if windows.len() >= MAX_ADDRESSES {
                client = None;
            }
        }
        let window = windows.entry(client).or_insert((Instant::now(), 0));
        if window.0.elapsed() >= WINDOW {
            *window = (Instant::now(), 0);
        }
        window.1 += 1;
    }
}

/// Whether a request carries an app password: as HTTP Basic's password, or as a
/// bearer token.
fn carries_password(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    if let Some(token) = value.strip_prefix("Bearer ") {
        return looks_like_password(token.trim());
    }
    let Some(encoded) = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
    else {
        return false;
    };
    data_encoding::BASE64
        .decode(encoded.trim().as_bytes())
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|d| {
            d.split_once(':')
                .map(|(_, p)| looks_like_password(p.trim()))
        })
        .unwrap_or(false)
}

/// The middleware: refuses a password from an address that sent too many wrong ones,
/// and counts a `401` answered to a request that carried one.
pub async fn throttle_passwords(
    State(vault): State<std::sync::Arc<crate::Vault>>,
    request: Request,
    next: Next,
) -> Response {
    if !carries_password(request.headers()) {
        return next.run(request).await;
    }
    let client = request.extensions().get::<ClientAddr>().map(|c| c.0);
    let throttle = &vault.password_throttle;
    if !throttle.allows(client) {
        let mut answer = (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "60")],
            format!(
                "more than {MAX_FAILURES} wrong app passwords from this address within a minute; wait a minute\n"
            ),
        )
            .into_response();
        answer.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        return answer;
    }
    let answer = next.run(request).await;
    if answer.status() == StatusCode::UNAUTHORIZED {
        throttle.failed(client);
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_failures_and_others_are_not() {
        let throttle = PasswordThrottle::default();
        let mallory = Some(IpAddr::from([192, 0, 2, 1]));
        let phone = Some(IpAddr::from([192, 0, 2, 2]));
        for _ in 0..MAX_FAILURES {
            assert!(throttle.allows(mallory));
            throttle.failed(mallory);
        }
        assert!(!throttle.allows(mallory));
        assert!(throttle.allows(phone));
        assert!(throttle.allows(None));
        // One wrong password each from more addresses than are remembered does not
        // make the throttle forget the one that is held.
        let flood = |i: u32| {
            Some(IpAddr::from(
                (0x2001_0db8_u128 << 96 | u128::from(i)).to_be_bytes(),
            ))
        };
        for i in 0..2 * MAX_ADDRESSES as u32 {
            throttle.failed(flood(i));
        }
        assert!(
            !throttle.allows(mallory),
            "a flood of addresses freed the held one"
        );
        // Nor does a flood of held addresses: beyond what is remembered, they share one
        // window, which is held as soon as it holds enough failures.
        for i in 0..MAX_ADDRESSES as u32 + 10 {
            for _ in 0..MAX_FAILURES {
                throttle.failed(flood(100_000 + i));
            }
        }
        assert!(!throttle.allows(mallory));
        assert!(
            !throttle.allows(flood(999_999)),
            "an address beyond the table is held with the others"
        );
    }

    #[test]
    fn passwords_are_found_in_basic_and_bearer_credentials() {
        let password = "abcd-efgh-jkmn-pqrs-tuvw";
        let mut headers = HeaderMap::new();
        assert!(!carries_password(&headers));
        headers.insert(
            header::AUTHORIZATION,
            format!("Bearer {password}").parse().unwrap(),
        );
        assert!(carries_password(&headers));
        let basic = data_encoding::BASE64.encode(format!("phone:{password}").as_bytes());
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert!(carries_password(&headers));
        headers.insert(
            header::AUTHORIZATION,
            "Bearer En0Cq...token".parse().unwrap(),
        );
        assert!(!carries_password(&headers));
    }
}
