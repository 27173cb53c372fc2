//! The dashboard's files: the page at `GET /` (markup in `dashboard/index.html`, filled
//! in by [`super::home`]), its script and its stylesheet, all compiled into the binary.
//! Every answer carries a Content-Security-Policy that lets the page load code, styles
//! and data only from this service: no inline script, no other origin.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::home;
use super::state::AppState;

/// Where the script is served.
pub const SCRIPT_PATH: &str = "/assets/dashboard.js";
/// Where the stylesheet is served.
pub const STYLESHEET_PATH: &str = "/assets/dashboard.css";

/// The dashboard's script.
pub const SCRIPT: &str = include_str!("dashboard/dashboard.js");
/// The dashboard's stylesheet.
pub const STYLESHEET: &str = include_str!("dashboard/dashboard.css");

/// Only this origin, for everything. `form-action 'none'`: the sign-in form is handled
/// by the script; should the script ever fail to load, the browser must not submit the
/// password as a query string. `frame-ancestors 'none'` keeps the page out of frames.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'; object-src 'none'";

/// `GET /`: the page, for browsers and for `curl`.
pub async fn page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    with_headers(
        home::render(state.tools(), host),
        "text/html; charset=utf-8",
    )
}

/// `GET /assets/dashboard.js`.
pub async fn script() -> Response {
    with_headers(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /assets/dashboard.css`.
pub async fn stylesheet() -> Response {
    with_headers(STYLESHEET, "text/css; charset=utf-8")
}

fn with_headers(body: impl IntoResponse, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // Small files that change with every release: always revalidate, never stale.
        (header::CACHE_CONTROL, "no-cache"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_never_parses_server_data_as_html() {
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!SCRIPT.contains(sink), "dashboard.js uses {sink}");
        }
    }

    #[tokio::test]
    async fn assets_have_their_types_and_the_policy() {
        for (response, kind, body) in [
            (script().await, "text/javascript", SCRIPT),
            (stylesheet().await, "text/css", STYLESHEET),
        ] {
            let headers = response.headers();
            assert!(headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind));
            // The policy and headers as doc/api.md documents them, spelled out here so a
            // change to the constant cannot pass unnoticed.
            assert_eq!(headers[header::CONTENT_SECURITY_POLICY], DOCUMENTED_POLICY);
            assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(headers[header::REFERRER_POLICY], "no-referrer");
            assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
            let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            assert_eq!(bytes, body.as_bytes());
        }
        let documented =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/api.md"))
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
        assert!(
            documented.contains(&format!("`Content-Security-Policy: {DOCUMENTED_POLICY}`")),
            "doc/api.md no longer documents the policy the dashboard sends"
        );
    }

    /// The policy doc/api.md promises for the page, script and stylesheet.
    const DOCUMENTED_POLICY: &str = "default-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'; object-src 'none'";

    #[test]
    fn the_page_loads_nothing_inline() {
        let page = home::render(&Default::default(), None);
        assert!(page.contains(SCRIPT_PATH) && page.contains(STYLESHEET_PATH));
        // The CSP forbids inline code and styles; the page must not depend on any.
        for inline in ["<script>", "style=", "<style", " onclick=", " onload="] {
            assert!(!page.contains(inline), "index.html has inline {inline}");
        }
    }
}
