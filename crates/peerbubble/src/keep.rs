//! The native member's encrypted key store (issue 17): its identity key and its conversations, kept across
//! restarts in a directory (`chat --store`), encrypted by client-core's key store under a passphrase (Argon2id)
//! that comes from a file, `PEERBUBBLE_PASSPHRASE` or a prompt, and is never printed. A key file of the old kind
//! (the Ed25519 seed in clear) is imported once.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, bail};
use peerbubble_client_core::Client;
use peerbubble_client_core::keystore::{KdfParams, KeyStore, KnowledgeKdf, Segment};
use peerbubble_peer::store::DirStorage;
use peerbubble_proto::IdentityKey;
use peerbubble_proto::identity::Zeroizing;

use crate::say;

/// The record holding the identity key's seed (as in the browser).
const RECORD_IDENTITY: &str = "member/identity";

/// An unlocked store, shared with the node task that saves into it.
pub type Kept = Arc<Mutex<KeyStore<DirStorage>>>;

/// The passphrase: from `file`, else `PEERBUBBLE_PASSPHRASE`, else asked on the terminal without echo.
fn passphrase(file: Option<&Path>) -> anyhow::Result<Zeroizing<String>> {
    if let Some(file) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(file).with_context(|| format!("cannot read passphrase file {}", file.display()))?,
        );
        return Ok(Zeroizing::new(text.trim_end_matches(['\n', '\r']).to_owned()));
    }
    if let Ok(text) = std::env::var("PEERBUBBLE_PASSPHRASE") {
        return Ok(Zeroizing::new(text));
    }
    prompt("passphrase of the key store: ")
}

/// Reads a line from the terminal with echo off (`stty`), restoring it after.
fn prompt(question: &str) -> anyhow::Result<Zeroizing<String>> {
    use std::io::{BufRead as _, Write as _};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .context("no terminal to ask the passphrase on: give --passphrase-file or PEERBUBBLE_PASSPHRASE")?;
    let stty = |arg: &str| std::process::Command::new("stty").arg(arg).stdin(tty.try_clone()?).status();
    let _ = stty("-echo");
    let mut out = tty.try_clone()?;
    write!(out, "{question}")?;
    out.flush()?;
    let mut line = Zeroizing::new(String::new());
    let read = std::io::BufReader::new(tty.try_clone()?).read_line(&mut line);
    let _ = stty("echo");
    writeln!(out)?;
    read?;
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_owned()))
}

/// A new key store's directory, checked empty, and its passphrase, asked before anything is spent (an invite).
pub struct NewStore {
    storage: DirStorage,
    secret: Zeroizing<String>,
}

/// Prepares a new key store in `dir`: refused if `dir` holds one already or the passphrase is too short.
pub fn prepare(dir: &Path, passphrase_file: Option<&Path>) -> anyhow::Result<NewStore> {
    let storage = DirStorage::open(dir).map_err(|e| anyhow::anyhow!("{}: {}", dir.display(), e.0))?;
    if !storage.is_empty().map_err(|e| anyhow::anyhow!(e.0))? {
        bail!("{} is not empty: a new key store needs a directory of its own", dir.display());
    }
    let secret = passphrase(passphrase_file)?;
    if secret.len() < 8 {
        bail!("choose a passphrase of at least 8 characters for the key store");
    }
    Ok(NewStore { storage, secret })
}

/// Creates the prepared store holding `key` (and an empty client): the key is written encrypted only.
pub fn create(new: NewStore, key: &IdentityKey) -> anyhow::Result<Kept> {
    let kdf = KnowledgeKdf::generate(KdfParams::default())?;
    let mut store = KeyStore::create(new.storage, &[Segment::knowledge(new.secret.as_bytes(), &kdf)?])?;
    store.put(RECORD_IDENTITY, &*key.to_seed())?;
    Client::new(key).save(&mut store)?;
    Ok(Arc::new(Mutex::new(store)))
}

/// Opens (or, with `import`, creates from that key file) the store in `dir`: the identity key and the client as
/// it was saved.
pub fn open(dir: &Path, import: Option<&Path>, passphrase_file: Option<&Path>) -> anyhow::Result<(IdentityKey, Kept)> {
    let storage = DirStorage::open(dir).map_err(|e| anyhow::anyhow!("{}: {}", dir.display(), e.0))?;
    if storage.is_empty().map_err(|e| anyhow::anyhow!(e.0))? {
        let Some(key_file) = import else {
            bail!(
                "{} holds no key store yet: enroll with --store {0} (or give --key <file> once to import a key file)",
                dir.display()
            );
        };
        let new = prepare(dir, passphrase_file)?;
        let key = crate::member::read_key(key_file)?;
        let kept = create(new, &key)?;
        say(&format!(
            "imported {} into the encrypted key store {}; the key file is no longer needed (delete it safely)\n",
            key_file.display(),
            dir.display()
        ));
        return Ok((key, kept));
    }
    let secret = passphrase(passphrase_file)?;
    let mut store = KeyStore::open(storage)?;
    let knowledge = store.knowledge_segment(secret.as_bytes())?;
    store.unlock(&[knowledge]).context("wrong passphrase for the key store (nothing was changed)")?;
    let seed = store.get(RECORD_IDENTITY)?.context("the key store holds no identity key")?;
    let seed: [u8; 32] = seed.as_slice().try_into().context("the key store's identity key is damaged")?;
    let key = IdentityKey::from_seed(&seed);
    if let Some(key_file) = import
        && crate::member::read_key(key_file)?.public_key() != key.public_key()
    {
        bail!("{} is another member's key than the one in {}", key_file.display(), dir.display());
    }
    Ok((key, Arc::new(Mutex::new(store))))
}

/// The client as the store keeps it.
pub fn client(key: &IdentityKey, kept: &Kept) -> anyhow::Result<Client> {
    let store = kept.lock().map_err(|_| anyhow::anyhow!("the key store lock is poisoned"))?;
    Ok(Client::restore(key, &store)?)
}
