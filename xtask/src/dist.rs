//! `cargo xtask dist`: the micro-node as operators install it. Release `peerbubble` (server build: no member
//! tools, so neither MLS nor WebRTC, ADR 0025) for x86_64 and aarch64 Linux, and a Debian package of each: the
//! binary, a systemd unit running `peerbubble up` as the unprivileged `peerbubble` user with its state in
//! `/var/lib/peerbubble` (0700), and `/etc/default/peerbubble`, the configuration an operator edits.
//!
//! aarch64 (Raspberry Pi 4 and 5, 64-bit Raspberry Pi OS or Debian) is cross-built with Debian's
//! `gcc-aarch64-linux-gnu`; `cargo xtask test` runs that build under Debian's qemu-user.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{cargo, sh};

/// A Linux target the micro-node ships for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    fn triple(self) -> &'static str {
        match self {
            Self::X86_64 => "x86_64-unknown-linux-gnu",
            Self::Aarch64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// Debian's name for it.
    fn debian(self) -> &'static str {
        match self {
            Self::X86_64 => "amd64",
            Self::Aarch64 => "arm64",
        }
    }

    /// The ELF `e_machine` of its binaries.
    pub(crate) fn elf_machine(self) -> u16 {
        match self {
            Self::X86_64 => 62,
            Self::Aarch64 => 183,
        }
    }
}

/// The cross toolchain and emulator: the target's standard library from rustup, and Debian's cross gcc (the
/// linker, and the C compiler for SQLite, ring and mimalloc), the target's libc and qemu-user.
pub(crate) fn aarch64_tools() -> anyhow::Result<()> {
    let targets = Command::new("rustup").args(["target", "list", "--installed"]).output()?;
    if !String::from_utf8_lossy(&targets.stdout).contains(Arch::Aarch64.triple()) {
        sh(Command::new("rustup").args(["target", "add", Arch::Aarch64.triple()]))?;
    }
    crate::debian_packages_for(&[
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("/usr/aarch64-linux-gnu/lib/libc.so", "libc6-dev-arm64-cross"),
        ("qemu-aarch64", "qemu-user"),
    ])
}

/// Builds the release server binary for `arch` (profile `dist`); its path. The web client and the console it
/// embeds must be built already (`web::build`).
pub(crate) fn build(arch: Arch) -> anyhow::Result<PathBuf> {
    let mut cmd = cargo();
    cmd.args(["build", "--locked", "--profile", "dist", "--package", "peerbubble", "--no-default-features"]);
    cmd.args(["--target", arch.triple()]);
    if arch == Arch::Aarch64 {
        aarch64_tools()?;
        cmd.env("CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER", "aarch64-linux-gnu-gcc")
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
    }
    sh(&mut cmd)?;
    let binary = crate::bench::target_dir(&crate::project_root()).join(arch.triple()).join("dist/peerbubble");
    check_elf(&binary, arch)?;
    Ok(binary)
}

/// Refuses a binary that is not a 64-bit little-endian ELF for `arch`.
pub(crate) fn check_elf(binary: &Path, arch: Arch) -> anyhow::Result<()> {
    let bytes = std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let machine = bytes.get(18..20).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if !bytes.starts_with(b"\x7fELF\x02\x01") || machine != Some(arch.elf_machine()) {
        bail!("{} is not a 64-bit ELF for {}", binary.display(), arch.triple());
    }
    Ok(())
}

const UNIT: &str = "\
[Unit]
Description=PeerBubble micro-node (admin API, console, signaling, TURN)
Documentation=file:///usr/share/doc/peerbubble/operations.md
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User=peerbubble
Group=peerbubble
EnvironmentFile=-/etc/default/peerbubble
ExecStart=/usr/bin/peerbubble up --data-dir /var/lib/peerbubble
# State: the admin database, the offline mailbox, the TURN secret and the TLS key, the service user's alone.
StateDirectory=peerbubble
StateDirectoryMode=0700
UMask=0077
Restart=on-failure
RestartSec=2
# Ports below 1024 (443 for HTTPS) without running as root.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
";

const DEFAULTS: &str = "\
# PeerBubble micro-node settings, read by peerbubble.service (`systemctl restart peerbubble` after a change).
# Every setting is also a command-line flag: `peerbubble up --help`. See /usr/share/doc/peerbubble/operations.md.

# Where members' browsers reach signaling and the web client. 0.0.0.0 serves every interface (Wi-Fi hotspot,
# Ethernet) over HTTPS with a self-signed certificate kept in /var/lib/peerbubble/tls.
PEERBUBBLE_LISTEN=0.0.0.0:8480
# The admin API and console. Keep it on loopback and reach it over SSH (ssh -L 8481:127.0.0.1:8481 pi) unless
# administrators sign in with OpenID Connect.
PEERBUBBLE_ADMIN_LISTEN=127.0.0.1:8481
# The address members open, as printed in invite links, e.g. https://10.42.0.1:8480 on a hotspot.
#PEERBUBBLE_PUBLIC_URL=https://peerbubble.local:8480
# Further names or addresses the self-signed certificate covers (comma-separated), e.g. the hotspot address.
#PEERBUBBLE_TLS_NAMES=10.42.0.1,peerbubble.lan
# Your own certificate instead of the self-signed one (readable by the peerbubble user).
#PEERBUBBLE_TLS_CERT=/etc/peerbubble/tls.crt
#PEERBUBBLE_TLS_KEY=/etc/peerbubble/tls.key
# The embedded TURN relay (UDP and TCP), and TURN over TLS.
PEERBUBBLE_TURN_UDP_PORT=3478
PEERBUBBLE_TURN_TLS_PORT=5349
# On a LAN without Internet, the members' own network, which TURN otherwise refuses to relay to.
#PEERBUBBLE_TURN_ALLOW_PEERS=10.42.0.0/24
# Audit events older than this are deleted.
#PEERBUBBLE_AUDIT_RETENTION_DAYS=90
PEERBUBBLE_LOG_FORMAT=text
";

const POSTINST: &str = "\
#!/bin/sh
set -e
if [ \"$1\" = configure ]; then
    install -d -m 0700 /var/lib/peerbubble
    if ! getent passwd peerbubble >/dev/null; then
        adduser --system --group --home /var/lib/peerbubble --no-create-home --gecos 'PeerBubble micro-node' \\
            peerbubble >/dev/null
    fi
    chown -R peerbubble:peerbubble /var/lib/peerbubble
    chmod -R go-rwx /var/lib/peerbubble
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload
        systemctl enable peerbubble.service >/dev/null
        systemctl restart peerbubble.service
        echo 'peerbubble: started; the admin token and demo invites are in: journalctl -u peerbubble'
    fi
fi
";

const PRERM: &str = "\
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop peerbubble.service || true
    systemctl disable peerbubble.service >/dev/null || true
fi
";

const POSTRM: &str = "\
#!/bin/sh
set -e
# The data directory holds the bubble's directory and audit trail: removed only on purge, never on remove.
if [ \"$1\" = purge ]; then
    rm -rf /var/lib/peerbubble
    if getent passwd peerbubble >/dev/null; then deluser --system peerbubble >/dev/null || true; fi
fi
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
";

/// Writes `binary` into a Debian package for `arch` in `out`; the package's path.
pub(crate) fn package(binary: &Path, arch: Arch, out: &Path) -> anyhow::Result<PathBuf> {
    let version = env!("CARGO_PKG_VERSION");
    let root = out.join(format!("peerbubble_{version}_{}", arch.debian()));
    if root.exists() {
        std::fs::remove_dir_all(&root)?;
    }
    let write = |path: &str, text: &str, mode: u32| -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().context("no parent")?)?;
        std::fs::write(&path, text)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    let size_kib = std::fs::metadata(binary)?.len() / 1024;
    let control = format!(
        "Package: peerbubble\nVersion: {version}\nArchitecture: {}\nMaintainer: PeerBubble <peerbubble@example.invalid>\n\
         Section: net\nPriority: optional\nDepends: libc6 (>= 2.36), adduser\nInstalled-Size: {size_kib}\n\
         Homepage: https://example.invalid/peerbubble\n\
         Description: sovereign end-to-end-encrypted messenger, micro-node\n \
         One machine (a Raspberry Pi is enough) serving a whole bubble without Internet: the admin API and its\n \
         console, signaling, the TURN relay and the browser client. Members' messages, calls and files are\n \
         end-to-end encrypted in their browsers; this server never sees plaintext or keys.\n",
        arch.debian()
    );
    write("DEBIAN/control", &control, 0o644)?;
    write("DEBIAN/conffiles", "/etc/default/peerbubble\n", 0o644)?;
    write("DEBIAN/postinst", POSTINST, 0o755)?;
    write("DEBIAN/prerm", PRERM, 0o755)?;
    write("DEBIAN/postrm", POSTRM, 0o755)?;
    write("etc/default/peerbubble", DEFAULTS, 0o644)?;
    write("lib/systemd/system/peerbubble.service", UNIT, 0o644)?;
    let docs = crate::project_root().join("docs/operations.md");
    write("usr/share/doc/peerbubble/operations.md", &std::fs::read_to_string(&docs)?, 0o644)?;
    write(
        "usr/share/doc/peerbubble/copyright",
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: peerbubble\n\n\
         Files: *\nLicense: Apache-2.0\n See /usr/share/common-licenses/Apache-2.0.\n",
        0o644,
    )?;
    let bin = root.join("usr/bin/peerbubble");
    std::fs::create_dir_all(bin.parent().context("no parent")?)?;
    std::fs::copy(binary, &bin)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755))?;
    }
    let deb = out.join(format!("peerbubble_{version}_{}.deb", arch.debian()));
    sh(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&root).arg(&deb))?;
    std::fs::remove_dir_all(&root)?;
    check_package(&deb, arch)?;
    Ok(deb)
}

/// Reads a package back: its architecture, and the files an operator relies on, owned by root.
pub(crate) fn check_package(deb: &Path, arch: Arch) -> anyhow::Result<()> {
    let field = Command::new("dpkg-deb").arg("--field").arg(deb).arg("Architecture").output()?;
    let found = String::from_utf8_lossy(&field.stdout).trim().to_owned();
    if found != arch.debian() {
        bail!("{} says Architecture {found:?}, expected {}", deb.display(), arch.debian());
    }
    let listing = Command::new("dpkg-deb").arg("--contents").arg(deb).output()?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    for (path, mode) in [
        ("./usr/bin/peerbubble", "-rwxr-xr-x root/root"),
        ("./lib/systemd/system/peerbubble.service", "-rw-r--r-- root/root"),
        ("./etc/default/peerbubble", "-rw-r--r-- root/root"),
        ("./usr/share/doc/peerbubble/operations.md", "-rw-r--r-- root/root"),
    ] {
        if !listing.lines().any(|l| l.starts_with(mode) && l.ends_with(path)) {
            bail!("{} lacks {path} ({mode}):\n{listing}", deb.display());
        }
    }
    Ok(())
}

/// `cargo xtask dist`: both packages in `<target>/dist`.
pub(crate) fn dist() -> anyhow::Result<()> {
    let out = crate::bench::target_dir(&crate::project_root()).join("dist");
    std::fs::create_dir_all(&out)?;
    // The console and the web client are embedded: built first (a fresh clone has neither).
    crate::web_tools()?;
    crate::web::build()?;
    for arch in [Arch::X86_64, Arch::Aarch64] {
        let binary = build(arch)?;
        let deb = package(&binary, arch, &out)?;
        println!(
            "dist {}: binary_mb={:.1} deb_mb={:.1} {}",
            arch.triple(),
            std::fs::metadata(&binary)?.len() as f64 / 1e6,
            std::fs::metadata(&deb)?.len() as f64 / 1e6,
            deb.display()
        );
    }
    Ok(())
}
