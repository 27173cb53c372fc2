//! `GET /`: the page. Its markup is `dashboard/index.html`; this module fills in the
//! name, version, the config's links and a runnable example, all escaped. Without
//! JavaScript (`curl /`) the page still says what the service is and how to call it;
//! with it, `dashboard.js` adds the job dashboard.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The page's markup, with `{{version}}`, `{{host}}` and `{{tools}}` to fill in.
const TEMPLATE: &str = include_str!("dashboard/index.html");

/// Escapes text for HTML element content and double-quoted attribute values.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// Only http(s) links become clickable: escaping alone would still let a
/// `javascript:` URL from the config run in the reader's browser.
fn is_web_link(url: &str) -> bool {
    let lower = url.trim_start().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

/// The page. `host` is the request's `Host` header, used only to make the example
/// runnable as shown; it is escaped like everything else.
pub fn render(tools: &BTreeMap<String, String>, host: Option<&str>) -> String {
    let host = escape_html(host.unwrap_or("127.0.0.1:8080"));
    let links = tool_links(tools);
    fill(TEMPLATE, |name| match name {
        "version" => Some(env!("CARGO_PKG_VERSION").to_owned()),
        "host" => Some(host.clone()),
        "tools" => Some(links.clone()),
        _ => None,
    })
}

/// The `<li>` lines of the `config.tools` links.
fn tool_links(tools: &BTreeMap<String, String>) -> String {
    let mut links = String::new();
    for (name, url) in tools {
        let (name, shown) = (escape_html(name), escape_html(url));
        if is_web_link(url) {
            let _ = writeln!(
                links,
                r#"        <li>{name}: <a href="{shown}">{shown}</a></li>"#
            );
        } else {
            let _ = writeln!(links, "        <li>{name}: {shown}</li>");
        }
    }
    if links.is_empty() {
        links.push_str("        <li>none configured (config.tools)</li>\n");
    }
    links
}

/// Replaces each `{{name}}` of `template` by `value(name)` in one pass, so a filled-in
/// value that happens to contain `{{tools}}` (a Host header can say anything) is never
/// expanded again. Unknown names stay as they are; a test makes sure there are none.
fn fill(template: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 512);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start + 2..].find("}}") else {
            break;
        };
        let name = &rest[start + 2..start + 2 + len];
        out.push_str(&rest[..start]);
        match value(name) {
            Some(v) => out.push_str(&v),
            None => out.push_str(&rest[start..start + len + 4]),
        }
        rest = &rest[start + len + 4..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_config_values_and_host() {
        let mut tools = BTreeMap::new();
        tools.insert(
            "<b>x</b>".to_owned(),
            r#"https://e.com/?a=1&b="2""#.to_owned(),
        );
        tools.insert("js".to_owned(), "javascript:alert(1)".to_owned());
        let page = render(&tools, Some("<evil>"));
        assert!(page.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(page.contains(r#"href="https://e.com/?a=1&amp;b=&quot;2&quot;""#));
        assert!(!page.contains("<b>x"));
        assert!(!page.contains("<evil>"));
        assert!(
            !page.contains(r#"href="javascript"#),
            "no clickable javascript: link"
        );
        assert!(page.contains(env!("CARGO_PKG_VERSION")));
    }

    #[test]
    fn every_placeholder_is_filled_once() {
        let page = render(&BTreeMap::new(), Some("{{tools}}"));
        assert!(!page.contains("{{version}}"));
        assert!(
            page.contains("http://{{tools}}/v1/image/rsync"),
            "a value is not expanded again"
        );
        assert!(page.contains("none configured"));
        let unknown = fill("a {{x}} b {{y", |_| None);
        assert_eq!(unknown, "a {{x}} b {{y");
        let page = render(&BTreeMap::new(), None);
        assert!(!page.contains("{{"), "no placeholder left unfilled");
    }
}
