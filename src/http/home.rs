//! `GET /`: a small HTML page with the name, version, the config's links and an example.

use std::collections::BTreeMap;
use std::fmt::Write as _;

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
    let version = env!("CARGO_PKG_VERSION");
    let host = escape_html(host.unwrap_or("127.0.0.1:8080"));
    let mut links = String::new();
    for (name, url) in tools {
        let (name, shown) = (escape_html(name), escape_html(url));
        if is_web_link(url) {
            let _ = writeln!(
                links,
                r#"    <li>{name}: <a href="{shown}">{shown}</a></li>"#
            );
        } else {
            let _ = writeln!(links, "    <li>{name}: {shown}</li>");
        }
    }
    if links.is_empty() {
        links.push_str("    <li>none configured (config.tools)</li>\n");
    }
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>imagersync {version}</title>
</head>
<body>
  <h1>imagersync</h1>
  <p>Copies container images between OCI / Docker registries. Version {version}.</p>
  <h2>API</h2>
  <ul>
    <li><code>GET /check</code>: health probe</li>
    <li><code>GET /metrics</code>: Prometheus metrics</li>
    <li><code>POST /v1/image/rsync</code>: sync an image (HTTP Basic auth)</li>
  </ul>
  <p>The full reference is <code>doc/api.md</code> in the source tree.</p>
  <pre>curl -u USER:PASSWORD -X POST http://{host}/v1/image/rsync \
  -d '{{"rsync_config":{{"source":"reg-a.example.com/team/app:v1","target":"reg-b.example.com/team/app:v1"}}}}'</pre>
  <h2>Links</h2>
  <ul>
{links}  </ul>
</body>
</html>
"#
    )
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
}
