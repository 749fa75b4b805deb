//! The console's API client is generated from `web-admin/src/api/openapi.json`; this fails when that copy and the
//! document the API builds from its handlers drift apart. `PEERBUBBLE_BLESS=1` (what `cargo xtask openapi` sets)
//! writes the current document instead.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[test]
fn the_console_client_is_generated_from_the_current_document() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../web-admin/src/api/openapi.json");
    let current = format!("{}\n", peerbubble_admin_api::api::openapi_json());
    assert!(
        current.contains("\"/api/v1/bubbles/{bubble}/members/{member}/view\""),
        "the document lacks a console route"
    );
    if std::env::var_os("PEERBUBBLE_BLESS").is_some() {
        std::fs::write(&path, &current).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != current {
        let line = committed.lines().zip(current.lines()).position(|(a, b)| a != b).map_or(0, |n| n + 1);
        panic!(
            "web-admin/src/api/openapi.json differs from the admin API's document (first at line {line}); run \
             `cargo xtask openapi` and rebuild the console"
        );
    }
}
