//! What a phone needs to connect with a grant's app password: the LAN address (a phone
//! cannot use loopback), the certificate's fingerprint, a link for DAVx⁵ (the QR code's
//! text) and an Apple configuration profile with the CardDAV and CalDAV accounts.
//!
//! In: the LAN listener (if served), the service's name and the password, once, as the
//! grant is made. Out: a [`PhoneSetup`]. Nothing here is stored: the password appears
//! only in what is handed back to the owner that one time.

use std::net::{IpAddr, SocketAddr};

use hearth_protocol::api::PhoneSetup;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::LanInfo;

/// What may stay as is in a URL's user name or password.
const USERINFO: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The address a phone on the LAN reaches a listener at: the address it was given
/// (`--lan 192.168.1.5:7743`), or for one on every address the address this host
/// reaches the network from.
pub(crate) fn phone_addr(lan: &LanInfo) -> Option<SocketAddr> {
    if !lan.addr.ip().is_unspecified() {
        return Some(lan.addr);
    }
    let ip = crate::lan::outbound_ip().filter(|ip| !ip.is_loopback())?;
    Some(SocketAddr::new(ip, lan.addr.port()))
}

/// The user name for a service: its name, as letters, digits and `-` (any works).
fn user_of(service: &str) -> String {
    let user = crate::pim::readable(service);
    if user.is_empty() {
        "hearth".into()
    } else {
        user
    }
}

/// How a phone connects for `service` with `password`, given the LAN listener.
pub fn setup(lan: Option<&LanInfo>, service: &str, password: &str) -> PhoneSetup {
    let user = user_of(service);
    let Some(lan) = lan else {
        return PhoneSetup {
            url: None,
            fingerprint: None,
            user,
            link: None,
            mobileconfig: None,
            note: Some(
                "this node serves only this computer (loopback): for a phone, start it with `hearth up --lan` (or `lan = true` in hearth.toml), then make the password again or give the phone the LAN address `hearth status` shows".into(),
            ),
        };
    };
    let Some(addr) = phone_addr(lan) else {
        return PhoneSetup {
            url: None,
            fingerprint: Some(lan.fingerprint.clone()),
            user,
            link: None,
            mobileconfig: None,
            note: Some(format!(
                "this node serves the LAN on {} but no address of this host on the network was found: give the phone this computer's LAN address with port {}",
                lan.addr,
                lan.addr.port()
            )),
        };
    };
    let host = match addr.ip() {
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    let link = format!(
        "caldavs://{}:{}@{host}:{}/",
        utf8_percent_encode(&user, USERINFO),
        utf8_percent_encode(password, USERINFO),
        addr.port()
    );
    PhoneSetup {
        url: Some(format!("https://{host}:{}/", addr.port())),
        fingerprint: Some(lan.fingerprint.clone()),
        link: Some(link),
        mobileconfig: Some(data_encoding::BASE64.encode(
            mobileconfig(&host, addr.port(), &user, password, service, &lan.cert_der).as_bytes(),
        )),
        user,
        note: None,
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A v4-shaped UUID from the profile's own content (a profile made again for the same
/// account replaces the one installed, rather than adding a second).
fn uuid_of(parts: &[&str]) -> String {
    let mut hasher = blake3::Hasher::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update(&[0]);
    }
    let h = hasher.finalize().to_hex();
    let h = h.as_str();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
    .to_ascii_uppercase()
}

/// An Apple configuration profile: a CardDAV and a CalDAV account on `host:port` over
/// TLS, and the LAN certificate as a root to trust (iOS asks the person to turn its
/// trust on in Settings, as it should for a self-signed certificate).
fn mobileconfig(
    host: &str,
    port: u16,
    user: &str,
    password: &str,
    service: &str,
    cert_der: &[u8],
) -> String {
    let id = format!("org.hearth.{}", user);
    let account = |kind: &str, prefix: &str| {
        format!(
            r#"    <dict>
      <key>PayloadType</key><string>com.apple.{kind}.account</string>
      <key>PayloadVersion</key><integer>1</integer>
      <key>PayloadIdentifier</key><string>{id}.{kind}</string>
      <key>PayloadUUID</key><string>{uuid}</string>
      <key>PayloadDisplayName</key><string>{display}</string>
      <key>{prefix}AccountDescription</key><string>Hearth</string>
      <key>{prefix}HostName</key><string>{host}</string>
      <key>{prefix}Port</key><integer>{port}</integer>
      <key>{prefix}UseSSL</key><true/>
      <key>{prefix}PrincipalURL</key><string>/dav/</string>
      <key>{prefix}Username</key><string>{user}</string>
      <key>{prefix}Password</key><string>{password}</string>
    </dict>
"#,
            uuid = uuid_of(&[&id, kind, host]),
            display = xml(&format!(
                "Hearth {}",
                if kind == "carddav" {
                    "contacts"
                } else {
                    "calendars"
                }
            )),
            host = xml(host.trim_start_matches('[').trim_end_matches(']')),
            user = xml(user),
            password = xml(password),
        )
    };
    let cert = data_encoding::BASE64.encode(cert_der);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<plist version="1.0">
<dict>
  <key>PayloadType</key><string>Configuration</string>
  <key>PayloadVersion</key><integer>1</integer>
  <key>PayloadIdentifier</key><string>{id}</string>
  <key>PayloadUUID</key><string>{uuid}</string>
  <key>PayloadDisplayName</key><string>{display}</string>
  <key>PayloadDescription</key><string>Contacts and calendars from your Hearth vault, through the grant {service}.</string>
  <key>PayloadContent</key>
  <array>
{carddav}{caldav}    <dict>
      <key>PayloadType</key><string>com.apple.security.root</string>
      <key>PayloadVersion</key><integer>1</integer>
      <key>PayloadIdentifier</key><string>{id}.certificate</string>
      <key>PayloadUUID</key><string>{cert_uuid}</string>
      <key>PayloadDisplayName</key><string>Hearth LAN certificate</string>
      <key>PayloadCertificateFileName</key><string>hearth.cer</string>
      <key>PayloadContent</key><data>{cert}</data>
    </dict>
  </array>
</dict>
</plist>
"#,
        uuid = uuid_of(&[&id, host]),
        cert_uuid = uuid_of(&[&id, &cert]),
        display = xml(&format!("Hearth ({service})")),
        service = xml(service),
        carddav = account("carddav", "CardDAV"),
        caldav = account("caldav", "CalDAV"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lan(addr: &str) -> LanInfo {
        LanInfo {
            addr: addr.parse().unwrap(),
            fingerprint: "AB:CD".into(),
            names: Vec::new(),
            cert_der: vec![1, 2, 3],
        }
    }

    #[test]
    fn a_phone_gets_the_lan_address_a_link_and_a_profile() {
        let setup = setup(
            Some(&lan("192.168.1.5:7743")),
            "Ada's phone",
            "k3vd-9q2w-&<x>",
        );
        assert_eq!(setup.url.as_deref(), Some("https://192.168.1.5:7743/"));
        assert_eq!(setup.user, "ada-s-phone");
        assert_eq!(
            setup.link.as_deref(),
            Some("caldavs://ada-s-phone:k3vd-9q2w-%26%3Cx%3E@192.168.1.5:7743/")
        );
        let profile = String::from_utf8(
            data_encoding::BASE64
                .decode(setup.mobileconfig.unwrap().as_bytes())
                .unwrap(),
        )
        .unwrap();
        assert!(profile.contains("<key>CardDAVHostName</key><string>192.168.1.5</string>"));
        assert!(profile.contains("<key>CalDAVPort</key><integer>7743</integer>"));
        assert!(
            profile.contains("<string>k3vd-9q2w-&amp;&lt;x&gt;</string>"),
            "{profile}"
        );
        assert!(profile.contains("<data>AQID</data>"));
        assert_eq!(profile.matches("<key>PayloadUUID</key>").count(), 4);
        // Well-formed XML whose every <key> in a dict is followed by its value.
        let mut reader = quick_xml::Reader::from_str(&profile);
        let (mut keys, mut values) = (0, 0);
        let mut stack: Vec<Vec<u8>> = Vec::new();
        loop {
            let event = reader.read_event().expect("well-formed XML");
            let (name, empty) = match &event {
                quick_xml::events::Event::Eof => break,
                quick_xml::events::Event::Start(e) => (e.name().0.as_bytes().to_vec(), false),
                quick_xml::events::Event::Empty(e) => (e.name().0.as_bytes().to_vec(), true),
                quick_xml::events::Event::End(_) => {
                    stack.pop();
                    continue;
                }
                _ => continue,
            };
            if stack.last().map(Vec::as_slice) == Some(b"dict".as_slice()) {
                if name == b"key" {
                    keys += 1;
                } else {
                    values += 1;
                }
            }
            if !empty {
                stack.push(name);
            }
        }
        assert_eq!(keys, values, "{profile}");
        // Without the LAN: no address, and the way to turn it on.
        let none = super::setup(None, "phone", "x");
        assert!(none.url.is_none() && none.link.is_none());
        assert!(none.note.unwrap().contains("hearth up --lan"));
        // An address given is the address.
        assert_eq!(
            super::setup(Some(&lan("10.0.0.2:8443")), "phone", "x")
                .url
                .as_deref(),
            Some("https://10.0.0.2:8443/")
        );
    }
}
