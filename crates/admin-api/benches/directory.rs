//! `cargo xtask bench directory`: the directory at organisation scale, same data, same run.
//!
//! A bubble of `--members` (100 000) members in `--categories` (50) categories, each category seeing the next
//! one, kept in a real SQLite admin database in a temp dir and served by the admin API on loopback.
//! - `slice_ms`: building one member's slice (what the bubble-server sends a member after `auth`) from the
//!   compiled directory, median of `--rounds`; `scan_ms` is the same slice found by asking `sees` of every
//!   member (the baseline a per-category index must beat); `slice_all_ms` is a member who sees everybody.
//! - `unchanged_poll_us`: a bubble-server's poll that finds nothing changed (`If-None-Match` with the ETag it
//!   has: one row read, `304`, no body), median; `full_poll_ms`: the same poll without an ETag (the whole
//!   directory read, encoded and sent), which is what every poll cost before the directory revision.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use peerbubble_admin_api::{ApiState, Store, router, token};
use peerbubble_proto::IdentityKey;
use peerbubble_proto::visibility::Directory;

const CREDENTIAL: &str = "bench-bubble-credential";

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    samples[samples.len() / 2]
}

fn category(c: usize) -> String {
    format!("cat-{c:02}")
}

/// The bubble `bench`: categories, each seeing the next, and members spread evenly over them (every tenth member
/// in two), plus one member of a category that sees every other (the worst slice). Inserted in one transaction.
async fn populate(store: &Store, members: usize, categories: usize) -> IdentityKey {
    store.create_bubble("bench", "Bench", &token::hash_token(CREDENTIAL), 0).await.unwrap();
    // Last first: a category may only see one that exists.
    for c in (0..categories).rev() {
        let sees = if c + 1 < categories { vec![category(c + 1)] } else { vec![] };
        store.create_category("bench", &category(c), &format!("Category {c}"), &sees).await.unwrap();
    }
    let all: Vec<String> = (0..categories).map(category).collect();
    store.create_category("bench", "overview", "Overview", &all).await.unwrap();
    let mut tx = store.pool().begin().await.unwrap();
    let mut insert = async |seed: usize, name: String, cats: Vec<String>| {
        let mut bytes = [0u8; 32];
        bytes[..8].copy_from_slice(&(seed as u64 + 1).to_le_bytes());
        let key = IdentityKey::from_seed(&bytes);
        let pk = key.public_key();
        let member = pk.member_id().to_string();
        sqlx::query(
            "INSERT INTO members (bubble_id, member_id, public_key, display_name, status, enrolled_at) \
             VALUES ('bench', $1, $2, $3, 'active', 0)",
        )
        .bind(&member)
        .bind(pk.to_string())
        .bind(name)
        .execute(&mut *tx)
        .await
        .unwrap();
        for c in cats {
            sqlx::query("INSERT INTO member_categories (bubble_id, member_id, category_id) VALUES ('bench', $1, $2)")
                .bind(&member)
                .bind(c)
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        key
    };
    for m in 0..members {
        let mut cats = vec![category(m % categories)];
        if m % 10 == 0 {
            cats.push(category((m / 10) % categories));
            cats.dedup();
        }
        insert(m, format!("Member {m:06}"), cats).await;
    }
    let overview = insert(members, "Overview desk".into(), vec!["overview".into()]).await;
    tx.commit().await.unwrap();
    overview
}

fn main() {
    let members = arg("--members", 100_000);
    let categories = arg("--categories", 50).max(1);
    let rounds = arg("--rounds", 30).max(1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("admin.db").display());
    runtime.block_on(async {
        let store = Store::connect(&url).await.unwrap();
        let started = Instant::now();
        let overview = populate(&store, members, categories).await;
        println!("populated {members} members in {categories} categories in {:.1} s", started.elapsed().as_secs_f64());

        // The slice, from the compiled directory the bubble-server holds.
        let (file, revision) = store.directory("bench").await.unwrap().unwrap();
        let started = Instant::now();
        let directory = Directory::compile(file, revision).unwrap();
        let compile = started.elapsed();
        let viewer = {
            let mut bytes = [0u8; 32];
            bytes[..8].copy_from_slice(&(members as u64 / 2 + 1).to_le_bytes());
            IdentityKey::from_seed(&bytes).public_key().member_id()
        };
        let time = |f: &dyn Fn() -> usize| -> (Duration, usize) {
            let mut samples = Vec::with_capacity(rounds);
            let mut n = 0;
            for _ in 0..rounds {
                let started = Instant::now();
                n = std::hint::black_box(f());
                samples.push(started.elapsed());
            }
            (median(samples), n)
        };
        let (slice, seen) = time(&|| directory.slice(&viewer, |_| false).len());
        let (scan, scanned) = time(&|| directory.member_ids().filter(|b| **b != viewer && directory.sees(&viewer, b)).count());
        assert_eq!(seen, scanned, "the slice and the scan disagree on who the viewer sees");
        let everybody = overview.public_key().member_id();
        let (slice_all, seen_all) = time(&|| directory.slice(&everybody, |_| false).len());
        assert_eq!(seen_all, members, "the overview desk sees every member");

        // Polls over HTTP, as a bubble-server makes them.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}/api/v1/bubbles/bench/directory", listener.local_addr().unwrap());
        let state = ApiState::new(store.clone(), None, "http://bench.invalid".into(), Arc::new(|| 0));
        tokio::spawn(async move { axum::serve(listener, router(Arc::new(state))).await });
        let http = reqwest::Client::new();
        let poll = async |etag: Option<&str>| {
            let mut req = http.get(&base).bearer_auth(CREDENTIAL);
            if let Some(etag) = etag {
                req = req.header(reqwest::header::IF_NONE_MATCH, etag);
            }
            let res = req.send().await.unwrap();
            let status = res.status();
            let etag = res.headers()[reqwest::header::ETAG].to_str().unwrap().to_owned();
            let body = res.bytes().await.unwrap();
            (status, etag, body.len())
        };
        let (status, etag, full_bytes) = poll(None).await;
        assert_eq!(status, reqwest::StatusCode::OK);
        let (mut unchanged, mut full) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let started = Instant::now();
            let (status, _, bytes) = poll(Some(&etag)).await;
            unchanged.push(started.elapsed());
            assert_eq!((status, bytes), (reqwest::StatusCode::NOT_MODIFIED, 0));
        }
        for _ in 0..rounds.min(10) {
            let started = Instant::now();
            let (status, _, bytes) = poll(None).await;
            full.push(started.elapsed());
            assert_eq!((status, bytes), (reqwest::StatusCode::OK, full_bytes));
        }
        let (unchanged, full) = (median(unchanged), median(full));
        println!(
            "compile_ms={:.1} visible={seen} directory_bytes={full_bytes} full_poll_ms={:.1} scan_ms={:.2} slice_all_ms={:.1} poll_ratio={:.0}",
            compile.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3,
            scan.as_secs_f64() * 1e3,
            slice_all.as_secs_f64() * 1e3,
            full.as_secs_f64() / unchanged.as_secs_f64(),
        );
        println!(
            "bench directory: members={members} categories={categories} slice_ms={:.2} unchanged_poll_us={:.0}",
            slice.as_secs_f64() * 1e3,
            unchanged.as_secs_f64() * 1e6,
        );
    });
}
