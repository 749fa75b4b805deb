//! The browser client, embedded in the binary and served by the bubble-server (and so by `peerbubble up`) with
//! nothing beside it, and the administrator's console, served under `/admin/` by the admin API. Every response of the router carries the security headers: a Content-Security-Policy with
//! no inline script or style and no remote origin (`'wasm-unsafe-eval'` for WebAssembly only), no sniffing, no
//! referrer, no framing. Hashed assets are cached for good; pages are never cached.
//!
//! What it must never do: serve a file that is not in the build, or a response without the CSP.

#![forbid(unsafe_code)]

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, header};
use axum::middleware::{self, Next};

mod files {
    include!(concat!(env!("OUT_DIR"), "/files.rs"));
}

/// The Content-Security-Policy of every response.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'wasm-unsafe-eval'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; worker-src 'self'; manifest-src 'self'; \
     font-src 'none'; object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The console's policy: the client's without WebAssembly or workers (the console runs neither); QR codes are
/// `data:` images.
pub const CONSOLE_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; manifest-src 'self'; font-src 'none'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Where the console is served.
pub const CONSOLE_PREFIX: &str = "/admin";

/// Paths that are the application's pages (the client routes them itself).
const PAGES: [&str; 3] = ["/", "/enroll", "/index.html"];

/// Whether the client was built into this binary.
pub fn is_built() -> bool {
    files::FILES.iter().any(|(path, _)| *path == "/index.html")
}

/// Whether the console was built into this binary.
pub fn console_is_built() -> bool {
    files::CONSOLE_FILES.iter().any(|(path, _)| *path == "/index.html")
}

/// The embedded files' paths.
pub fn paths() -> impl Iterator<Item = &'static str> {
    files::FILES.iter().map(|(path, _)| *path)
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("wasm") => "application/wasm",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("webmanifest") => "application/manifest+json",
        _ => "application/octet-stream",
    }
}

const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>PeerBubble</title></head>\
<body><h1>The web client is not built into this binary</h1><p>Build it with <code>cargo xtask web</code> (or start \
everything with <code>cargo xtask run</code>), then rebuild <code>peerbubble</code>.</p></body></html>";

const CONSOLE_NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>PeerBubble \
console</title></head><body><h1>The administrator's console is not built into this binary</h1><p>Build it with \
<code>cargo xtask web</code> (or start everything with <code>cargo xtask run</code>), then rebuild \
<code>peerbubble</code>. The API answers meanwhile under <code>/api/v1</code>.</p></body></html>";

/// Answers a GET or HEAD for an embedded file; everything else is 404 or 405.
async fn serve(request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let page = PAGES.contains(&path.as_str());
    answer(&request, files::FILES, if page { "/index.html" } else { &path }, page, NOT_BUILT)
}

/// The console: `/admin/<file>` from its build; any other path under `/admin` without a file extension is one of
/// its pages (it routes them itself).
async fn serve_console(request: Request<Body>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let rest = path.strip_prefix(CONSOLE_PREFIX).unwrap_or("");
    let last = rest.rsplit('/').next().unwrap_or("");
    let page = !rest.starts_with("/assets/") && !last.contains('.');
    let mut response =
        answer(&request, files::CONSOLE_FILES, if page { "/index.html" } else { rest }, page, CONSOLE_NOT_BUILT);
    response
        .headers_mut()
        .insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONSOLE_CONTENT_SECURITY_POLICY));
    response
}

fn answer(
    request: &Request<Body>,
    set: &'static [(&'static str, &'static [u8])],
    lookup: &str,
    page: bool,
    not_built: &'static str,
) -> Response<Body> {
    let method = request.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    let Some((_, bytes)) = set.iter().find(|(p, _)| *p == lookup) else {
        if page {
            return self::page(StatusCode::OK, not_built);
        }
        return status(StatusCode::NOT_FOUND, "not found");
    };
    let immutable = lookup.starts_with("/assets/");
    let mut response = Response::new(if method == Method::HEAD { Body::empty() } else { Body::from(*bytes) });
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type(lookup)));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if immutable { "public, max-age=31536000, immutable" } else { "no-cache" }),
    );
    response
}

fn status(code: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(text));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn page(code: StatusCode, html: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    response
}

/// The security headers every response gets (added where a handler did not set its own).
pub fn security_headers(headers: &mut HeaderMap) {
    let set = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (HeaderName::from_static("cross-origin-opener-policy"), "same-origin"),
        (HeaderName::from_static("cross-origin-resource-policy"), "same-origin"),
        (
            HeaderName::from_static("permissions-policy"),
            "camera=(self), microphone=(self), display-capture=(self), geolocation=(), payment=(), usb=()",
        ),
    ];
    for (name, value) in set {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
}

async fn with_headers(request: Request<Body>, next: Next) -> Response<Body> {
    let mut response = next.run(request).await;
    security_headers(response.headers_mut());
    response
}

/// Adds the security headers to every response of `router`.
pub fn secure<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router.layer(middleware::from_fn(with_headers))
}

/// The router serving the embedded client (GET and HEAD), with the security headers; meant as a fallback.
pub fn router() -> Router {
    secure(Router::new().fallback(serve))
}

/// The router serving the console under `/admin` (GET and HEAD), with the security headers and the console's
/// policy; merged into the admin API's router.
pub fn console_router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    secure(
        Router::new()
            .route(CONSOLE_PREFIX, axum::routing::any(serve_console))
            .route("/admin/", axum::routing::any(serve_console))
            .route("/admin/{*path}", axum::routing::any(serve_console)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use tower::ServiceExt as _;

    async fn get(method: Method, path: &str) -> Response<Body> {
        let request = Request::builder().method(method).uri(path).body(Body::empty()).unwrap();
        router().oneshot(request).await.unwrap()
    }

    #[tokio::test]
    async fn every_answer_carries_the_policy_and_unknown_paths_are_404() {
        for (method, path, code) in [
            (Method::GET, "/", StatusCode::OK),
            (Method::GET, "/enroll", StatusCode::OK),
            (Method::GET, "/assets/nothing-here.js", StatusCode::NOT_FOUND),
            (Method::GET, "/../Cargo.toml", StatusCode::NOT_FOUND),
            (Method::POST, "/", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let response = get(method.clone(), path).await;
            assert_eq!(response.status(), code, "{method} {path}");
            let csp = response.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
            assert!(csp.contains("script-src 'self' 'wasm-unsafe-eval'") && !csp.contains("unsafe-inline"), "{csp}");
            assert_eq!(response.headers().get(header::X_CONTENT_TYPE_OPTIONS).unwrap(), "nosniff");
        }
    }

    #[tokio::test]
    async fn the_console_lives_under_admin_with_its_own_policy() {
        for (method, path, code) in [
            (Method::GET, "/admin", StatusCode::OK),
            (Method::GET, "/admin/", StatusCode::OK),
            (Method::GET, "/admin/bubbles/demo", StatusCode::OK),
            (Method::GET, "/admin/assets/nothing-here.js", StatusCode::NOT_FOUND),
            (Method::GET, "/admin/../Cargo.toml", StatusCode::NOT_FOUND),
            (Method::POST, "/admin/", StatusCode::METHOD_NOT_ALLOWED),
        ] {
            let request = Request::builder().method(method.clone()).uri(path).body(Body::empty()).unwrap();
            let response = console_router::<()>().oneshot(request).await.unwrap();
            assert_eq!(response.status(), code, "{method} {path}");
            let csp = response.headers().get(header::CONTENT_SECURITY_POLICY).unwrap().to_str().unwrap();
            assert_eq!(csp, CONSOLE_CONTENT_SECURITY_POLICY, "{path}");
            assert!(!csp.contains("unsafe") && csp.contains("script-src 'self';"), "{csp}");
            assert_eq!(response.headers().get(header::X_FRAME_OPTIONS).unwrap(), "DENY");
        }
        for (path, _) in files::CONSOLE_FILES {
            let request = Request::builder().uri(format!("{CONSOLE_PREFIX}{path}")).body(Body::empty()).unwrap();
            let response = console_router::<()>().oneshot(request).await.unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            assert_eq!(response.headers().get(header::CONTENT_TYPE).unwrap(), content_type(path), "{path}");
        }
    }

    #[tokio::test]
    async fn embedded_files_are_served_with_their_type() {
        for path in paths() {
            let response = get(Method::GET, path).await;
            assert_eq!(response.status(), StatusCode::OK, "{path}");
            let expected = content_type(path);
            assert_eq!(response.headers().get(header::CONTENT_TYPE).unwrap(), expected, "{path}");
        }
    }
}
