//! What a member does from the command line: make a key, enroll with an invite, connect to a bubble. The secret
//! key is made and kept here, on the member's machine; only the public key and a signature leave it.

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use peerbubble_peer::SignalClient;
use peerbubble_proto::{EnrollRequest, IdentityKey, Invite, ServerFrame};
use peerbubble_tls_trust::{Pin, Trust};

use crate::say;

pub fn write_secret(path: &Path, key: &IdentityKey) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file =
        options.open(path).with_context(|| format!("cannot create key file {} (it must not exist)", path.display()))?;
    file.write_all(key.to_seed_base64().as_bytes())?;
    file.write_all(b"\n")?;
    Ok(())
}

pub fn read_key(path: &Path) -> anyhow::Result<IdentityKey> {
    let text = peerbubble_proto::identity::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?,
    );
    IdentityKey::from_seed_base64(&text).with_context(|| format!("{} is not a PeerBubble key file", path.display()))
}

/// Where `enroll` keeps the new key.
pub enum KeepKey {
    /// A key file, in clear (owner-only permissions).
    File(std::path::PathBuf),
    /// A new encrypted key store (checked empty, passphrase asked) in this directory.
    Store(crate::keep::NewStore, std::path::PathBuf),
}

/// Makes a key, proves possession to redeem the invite, and keeps the key where `keep` says. Everything that can
/// be refused here (an existing file, a store that is not new, a short passphrase) is, before the invite is used.
pub async fn enroll(api: &str, pin: Option<Pin>, invite: &str, keep: KeepKey) -> anyhow::Result<()> {
    let invite = Invite::parse(invite)?;
    if let KeepKey::File(key_out) = &keep
        && key_out.exists()
    {
        bail!("{} exists already; choose another file (one key per member per bubble)", key_out.display());
    }
    let key = IdentityKey::generate()?;
    let public_key = key.public_key();
    let body = serde_json::to_value(EnrollRequest::new(&invite, &key))?;
    let answer = crate::api_post(api, pin, "/api/v1/enroll", None, &body, "enrollment").await?;
    let bubble = invite.bubble();
    let kept = match keep {
        KeepKey::File(key_out) => {
            write_secret(&key_out, &key)?;
            format!("key kept in {}", key_out.display())
        }
        KeepKey::Store(new, dir) => {
            crate::keep::create(new, &key)?;
            format!("key kept encrypted in the key store {} (open it with `chat --store`)", dir.display())
        }
    };
    say(&format!(
        "enrolled in bubble {bubble} as {} (member {})\n{kept} — it never left this machine\n",
        answer["display_name"].as_str().unwrap_or("?"),
        public_key.member_id(),
    ));
    Ok(())
}

/// Connects and prints the directory slice and presence until Ctrl-C.
pub async fn connect(key: &Path, url: &str, pin: Option<Pin>) -> anyhow::Result<()> {
    let key = read_key(key)?;
    let mut client = SignalClient::connect_with(url, &key, Trust::from_pin(pin)).await?;
    say(&format!("connected to bubble {:?} as {} (session {})\n", client.bubble(), client.member(), client.session()));
    let show = |client: &SignalClient| {
        let mut text = format!("directory ({} visible):\n", client.directory().len());
        for entry in client.directory().values() {
            let state = if entry.online { "online " } else { "offline" };
            text += &format!("  {state} {} [{}] {}\n", entry.display_name, entry.categories.join(", "), entry.member);
        }
        say(&text);
    };
    show(&client);
    let ping_every = std::time::Duration::from_millis(client.limits().idle_timeout_ms / 3);
    let mut ticker = tokio::time::interval(ping_every);
    ticker.tick().await;
    loop {
        tokio::select! {
            frame = client.next() => match frame? {
                ServerFrame::Presence { member, online } => {
                    let name = client.directory().get(&member).map_or_else(|| member.to_string(), |e| e.display_name.clone());
                    say(&format!("{name} is {}\n", if online { "online" } else { "offline" }));
                }
                ServerFrame::Directory { part, parts, .. } if part + 1 == parts => show(&client),
                ServerFrame::Error { code, message, .. } => say(&format!("server: {}: {message}\n", code.as_str())),
                _ => {}
            },
            _ = ticker.tick() => { client.ping().await?; }
            _ = tokio::signal::ctrl_c() => { client.close().await?; return Ok(()); }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_are_private_and_never_overwritten() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("me.key");
        let key = IdentityKey::generate()?;
        write_secret(&path, &key)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path)?.permissions().mode() & 0o777, 0o600);
        }
        assert!(write_secret(&path, &IdentityKey::generate()?).is_err());
        assert_eq!(read_key(&path)?.public_key(), key.public_key());
        Ok(())
    }
}
